# One image for the three services and the console; docker-compose.yml picks the module to run.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 LOG_FORMAT=json
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY ingest_api ./ingest_api
COPY router_worker ./router_worker
COPY storage_worker ./storage_worker
COPY console ./console
RUN pip install --no-cache-dir .
USER nobody
CMD ["python", "-m", "ingest_api"]
