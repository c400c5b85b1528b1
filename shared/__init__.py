"""Code used by more than one mibo-ingest service: contracts, settings, plumbing."""
