"""The three topic names of the Kafka contract (SPEC §4), under a configurable prefix."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Topics:
    raw: str
    routed: str
    dlq: str

    @classmethod
    def with_prefix(cls, prefix: str) -> Topics:
        return cls(raw=f"{prefix}traces.raw", routed=f"{prefix}traces.routed", dlq=f"{prefix}traces.dlq")

    def all(self) -> tuple[str, str, str]:
        return (self.raw, self.routed, self.dlq)
