"""CPU time per process from ``/proc/<pid>/stat``: the figure that holds on a shared machine.

``utime + stime`` (fields 14 and 15, clock ticks) of each process, read before and after a run;
divided by the requests or traces it handled, it gives CPU milliseconds per item — stable while
throughput moves with whatever else shares the two cores (see ../shared/notes/measuring.md).

    meter = CpuMeter({"ingest": pid, "router": pid2})
    meter.start()
    ... run the load ...
    per_item = meter.stop().per_item_ms(count)   # {"ingest": 0.12, "router": 0.05}

``SELF`` names the calling process (an in-process baseline measures itself).
"""

from __future__ import annotations

import os
import resource
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
SELF = 0  # pid placeholder: this process (read via getrusage, finer than clock ticks)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used so far (its own threads, not its children)."""
    if pid == SELF:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of the whole line
    return (utime + stime) / TICKS


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (the workers of an ``INGEST_WORKERS > 1`` parent)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(p) for p in text)
    return found


@dataclass
class CpuMeter:
    """CPU seconds per named process over one interval. A name may stand for several pids
    (a parent and its workers): their CPU is summed."""

    pids: Mapping[str, int | list[int]]
    _before: dict[str, float] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)

    def _read(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, pid in self.pids.items():
            group = pid if isinstance(pid, list) else [pid]
            out[name] = sum(cpu_seconds(p) for p in group)
        return out

    def start(self) -> CpuMeter:
        self._before = self._read()
        return self

    def stop(self) -> CpuMeter:
        after = self._read()
        self.used = {name: after[name] - self._before[name] for name in after}
        return self

    def per_item_ms(self, items: int) -> dict[str, float]:
        """CPU milliseconds per item for each process (``nan`` for zero items)."""
        if items <= 0:
            return {name: float("nan") for name in self.used}
        return {name: seconds * 1000 / items for name, seconds in self.used.items()}
