"""The one way instants are written on the wire: ISO 8601 in UTC, milliseconds, ``Z``
(``2026-11-28T12:00:00.000Z``), as Mibo's API writes them."""

from __future__ import annotations

import datetime as dt


def iso_utc(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
