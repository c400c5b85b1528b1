"""API key format, hashing and masking: pure functions, no I/O (SPEC §2).

A key is ``mibo_`` + 40 base62 characters from the OS CSPRNG (~238 bits). Only
HMAC-SHA256(pepper, key) and the last 4 characters are ever stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string

PREFIX = "mibo_"
RANDOM_LENGTH = 40
MAX_LENGTH = 128  # longer presented values are malformed without further work
ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
KEY_RE = re.compile(r"^mibo_[0-9A-Za-z]{32,}$")


def generate_key() -> str:
    return PREFIX + "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_LENGTH))


def is_well_formed(presented: str) -> bool:
    """Cheap shape check: malformed keys are rejected without touching the database."""
    return len(presented) <= MAX_LENGTH and KEY_RE.match(presented) is not None


def hash_key(pepper: str, key: str) -> bytes:
    return hmac.new(pepper.encode(), key.encode(), hashlib.sha256).digest()


def last4(key: str) -> str:
    return key[-4:]


def masked(last_four: str) -> str:
    return f"{PREFIX}...{last_four}"
