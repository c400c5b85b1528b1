"""The router worker: ``traces.raw`` → ``traces.routed`` or ``traces.dlq`` (SPEC §5)."""
