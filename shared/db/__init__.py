"""The database schema (SQLAlchemy Core tables), migrations and connection helpers."""
