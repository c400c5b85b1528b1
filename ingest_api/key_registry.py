"""In-process key registry: the hot path authenticates without a database query.

- Every key (hash → KeyInfo) is loaded at start-up and kept current by PostgreSQL ``NOTIFY`` on
  ``mibo_registry`` (emitted by triggers in the same transaction as the change): a revoked key is
  dropped the moment its notification arrives, then the whole registry is reloaded.
- shared.registry.change_feed does the listening: a periodic full reload backstops missed notifications, the listener reconnects by
  itself and reloads after every (re)connect, so nothing changed while it was away is missed.
- A miss may be a key created a moment ago whose notification is still in flight, so misses may
  ask the database — but only through a negative cache and a global token bucket: a flood of
  unknown keys costs at most ``miss_lookups_per_second`` queries per second, whatever its size.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import structlog
from psycopg_pool import AsyncConnectionPool

from shared.contracts.keys import hash_key, is_well_formed
from shared.registry import KeyInfo, fetch_key, load_key_registry
from shared.registry.change_feed import ChangeFeed

log = structlog.get_logger(__name__)


class TokenBucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = burst, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class KeyRegistry:
    def __init__(
        self,
        dsn: str,
        pool: AsyncConnectionPool,
        pepper: str,
        *,
        refresh_interval: float = 30.0,
        negative_ttl: float = 5.0,
        miss_lookups_per_second: float = 20.0,
    ) -> None:
        self._pool = pool
        self._pepper = pepper
        self._feed = ChangeFeed(
            dsn, self.reload, on_change=self._apply, refresh_interval=refresh_interval, name="key registry"
        )
        self._negative_ttl = negative_ttl
        self._misses = TokenBucket(miss_lookups_per_second, miss_lookups_per_second)
        self._keys: dict[bytes, KeyInfo] = {}
        self._negative: dict[bytes, float] = {}
        # Revoked ids, kept so a reload that read its snapshot before the revoke cannot revive them.
        self._revoked: dict[uuid.UUID, float] = {}
        self._inflight: dict[bytes, asyncio.Future[KeyInfo | None]] = {}
        self.loaded_at: float | None = None  # monotonic time of the last full load
        self.db_lookups = 0

    # -- life cycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        await self._feed.start()

    async def stop(self) -> None:
        await self._feed.stop()

    @property
    def listening(self) -> bool:
        return self._feed.listening

    @property
    def ready(self) -> bool:
        return self.loaded_at is not None

    @property
    def size(self) -> int:
        return len(self._keys)

    def refresh_age(self) -> float:
        return -1.0 if self.loaded_at is None else time.monotonic() - self.loaded_at

    # -- the hot path ----------------------------------------------------------------------------
    async def authenticate(self, presented: str) -> KeyInfo | None:
        if not is_well_formed(presented):
            return None
        digest = hash_key(self._pepper, presented)
        if (info := self._keys.get(digest)) is not None:
            return info
        return await self._lookup_miss(digest)

    async def _lookup_miss(self, digest: bytes) -> KeyInfo | None:
        now = time.monotonic()
        if self._negative.get(digest, 0.0) > now:
            return None
        if (pending := self._inflight.get(digest)) is not None:
            return await asyncio.shield(pending)
        if not self._misses.take():
            return None  # flood: answer 401 without asking the database
        future: asyncio.Future[KeyInfo | None] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        try:
            self.db_lookups += 1
            async with self._pool.connection(timeout=2.0) as conn:
                info = await fetch_key(conn, digest)
            if info is None or info.id in self._revoked:
                info = None
                self._remember_miss(digest, now)
            else:
                self._keys[digest] = info
            future.set_result(info)
            return info
        except Exception as exc:  # the database is down: unknown keys stay unknown
            log.warning("key lookup failed", error=str(exc))
            future.set_result(None)
            return None
        finally:
            del self._inflight[digest]

    def _remember_miss(self, digest: bytes, now: float) -> None:
        if len(self._negative) > 100_000:
            self._negative = {d: t for d, t in self._negative.items() if t > now}
            if len(self._negative) > 100_000:
                self._negative.clear()
        self._negative[digest] = now + self._negative_ttl

    # -- keeping current -------------------------------------------------------------------------
    def _apply(self, change: dict[str, object]) -> None:
        """A change notification: drop a deleted key at once (the reload follows)."""
        if change.get("table") == "api_keys" and change.get("op") == "DELETE" and change.get("id"):
            revoked = uuid.UUID(str(change["id"]))
            self._revoked[revoked] = time.monotonic()
            self._keys = {d: k for d, k in self._keys.items() if k.id != revoked}
            log.info("key revoked", key_id=str(revoked))
        if change.get("table") in ("api_keys", "api_key_platforms", None):
            self._negative.clear()

    async def reload(self) -> None:
        async with self._pool.connection(timeout=10.0) as conn:
            keys = await load_key_registry(conn)
        horizon = time.monotonic() - 600
        self._revoked = {k: t for k, t in self._revoked.items() if t > horizon}
        self._keys = {d: k for d, k in keys.items() if k.id not in self._revoked}
        self._negative.clear()
        self.loaded_at = time.monotonic()
