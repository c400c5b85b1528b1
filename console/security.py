"""Signing in, pure: server-side sessions, CSRF tokens, the sign-in rate limit, and the headers
every answer carries.

A session is a random 256-bit token in an HttpOnly, SameSite=Strict cookie (Secure behind TLS);
the server keeps only its SHA-256, with the session's CSRF token, its expiry and what it shows
once (a new API key). Signing out or expiring forgets it, so a stolen cookie stops working at
once. Sessions live in the console's memory: a restart signs everybody out, which for one
operator process is the safe default.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

COOKIE = "mibo_console"
SIGNIN_COOKIE = "mibo_console_signin"  # the sign-in form's double-submit token (no session yet)
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# No inline script or style anywhere: everything comes from /static of this origin.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # no-referrer would make browsers send `Origin: null` on our own forms
    "Cross-Origin-Opener-Policy": "same-origin",
}

Clock = Callable[[], float]


def new_token() -> str:
    return secrets.token_urlsafe(32)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def same_secret(presented: str, expected: str) -> bool:
    """Constant-time comparison of two secrets as the bytes they are."""
    return hmac.compare_digest(
        presented.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


@dataclass
class Session:
    csrf: str
    expires_at: float
    flashes: list[str] = field(default_factory=list)
    shown_once: dict[str, object] = field(default_factory=dict)  # a new key, until its page is shown


class Sessions:
    """Sessions by the SHA-256 of their cookie, each expiring ``ttl`` seconds after sign-in."""

    def __init__(self, ttl: float, clock: Clock = time.time) -> None:
        self.ttl = ttl
        self.clock = clock
        self._by_digest: dict[str, Session] = {}

    def create(self) -> tuple[str, Session]:
        self._purge()
        token = new_token()
        session = Session(csrf=new_token(), expires_at=self.clock() + self.ttl)
        self._by_digest[_digest(token)] = session
        return token, session

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        digest = _digest(token)
        session = self._by_digest.get(digest)
        if session is None:
            return None
        if session.expires_at <= self.clock():
            del self._by_digest[digest]
            return None
        return session

    def drop(self, token: str | None) -> None:
        if token:
            self._by_digest.pop(_digest(token), None)

    def __len__(self) -> int:
        return len(self._by_digest)

    def _purge(self) -> None:
        now = self.clock()
        for digest in [d for d, s in self._by_digest.items() if s.expires_at <= now]:
            del self._by_digest[digest]


class RateLimit:
    """At most ``limit`` attempts per client in any ``window`` seconds (a sliding window)."""

    def __init__(self, limit: int, window: float = 60.0, clock: Clock = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._attempts: dict[str, deque[float]] = {}

    def attempt(self, client: str) -> float:
        """Count an attempt of ``client``: 0 when it may go ahead, else the seconds to wait."""
        now = self.clock()
        attempts = self._attempts.setdefault(client, deque())
        while attempts and attempts[0] <= now - self.window:
            attempts.popleft()
        if len(attempts) >= self.limit:
            return max(attempts[0] + self.window - now, 0.001)
        attempts.append(now)
        if len(self._attempts) > 10_000:  # many clients: forget the idle ones
            for key in [k for k, v in self._attempts.items() if not v or v[-1] <= now - self.window]:
                del self._attempts[key]
        return 0.0


def csrf_ok(session: Session, presented: str | None) -> bool:
    return bool(presented) and same_secret(presented or "", session.csrf)


def same_origin(origin: str | None, scheme: str, host: str) -> bool:
    """A state-changing request's ``Origin``, when the browser sent one, must be this console's."""
    if origin is None:
        return True  # older browsers, curl: the CSRF token decides
    return origin == f"{scheme}://{host}"
