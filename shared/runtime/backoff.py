"""Capped exponential backoff: the one retry pacing every loop here uses.

Retry loops differ in what they retry and when they give up (a closing flag, a stop event), so
they keep their own ``while``; what they share is the pacing — 0.5 s, 1 s, 2 s, ... up to a cap,
back to the start after a success — and a sleep that ends early when the process is stopping.
"""

from __future__ import annotations

import asyncio
import contextlib


class Backoff:
    def __init__(self, initial: float = 0.5, cap: float = 10.0) -> None:
        self.initial = initial
        self.cap = cap
        self._next = initial

    def next_delay(self) -> float:
        """The delay to wait now; the following one doubles (up to the cap)."""
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay

    def reset(self) -> None:
        """After a success: the next failure waits ``initial`` again."""
        self._next = self.initial

    async def sleep(self, delay: float, stop: asyncio.Event | None = None) -> None:
        """Sleep ``delay`` seconds, or less if ``stop`` is set meanwhile."""
        await pause(delay, stop)


async def pause(delay: float, stop: asyncio.Event | None = None) -> None:
    """Sleep ``delay`` seconds, or less if ``stop`` is set meanwhile."""
    if stop is None:
        await asyncio.sleep(delay)
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await stop.wait()
