"""Settings: typed parsing, and the README's configuration table listing exactly these variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.runtime.settings import DEV_PEPPER, Settings, markdown_table, sqlalchemy_url

README = Path(__file__).resolve().parents[2] / "README.md"


def test_defaults_parse() -> None:
    s = Settings.from_env({})
    assert s.ingest_port == 8080 and s.max_body_bytes == 10 * 1024 * 1024
    assert s.key_pepper == DEV_PEPPER and s.uses_dev_pepper
    assert s.admin_token == ""


def test_values_are_typed() -> None:
    s = Settings.from_env({"INGEST_PORT": "9000", "PRODUCE_TIMEOUT_SECONDS": "2.5"})
    assert s.ingest_port == 9000 and s.produce_timeout_seconds == 2.5


def test_bad_value_is_a_clear_error() -> None:
    with pytest.raises(SystemExit, match="ingest_port"):
        Settings.from_env({"INGEST_PORT": "eighty"})


def test_database_url_forms() -> None:
    assert sqlalchemy_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert sqlalchemy_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    with pytest.raises(SystemExit):
        sqlalchemy_url("mysql://u@h/db")


def test_readme_table_matches_settings() -> None:
    """The README's table is the struct rendered: names, defaults and meanings declared once."""
    assert markdown_table() in README.read_text(), "README is stale: paste python -m shared.runtime.settings"


def test_empty_pepper_is_refused() -> None:
    with pytest.raises(SystemExit, match="KEY_PEPPER"):
        Settings.from_env({"KEY_PEPPER": ""})
