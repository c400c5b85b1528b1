"""The ingest API: authenticate, validate, enqueue to Kafka, answer 202 (SPEC §3)."""
