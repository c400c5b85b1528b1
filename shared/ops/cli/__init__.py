"""The ``mibo-ingest`` operator CLI: one command, one sub-module per group of subcommands."""
