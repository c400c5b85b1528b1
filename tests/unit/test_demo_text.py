"""What ``dev up`` prints about the demo tenant (shared.devstack.demo): the seed's own request with
the URL and key filled in, the key only by the ``up`` that made it. The demo itself, made and
found in a real database and pasted against a running stack: tests/integration/test_demo.py."""

from __future__ import annotations

import shlex
import uuid
from pathlib import Path

import pytest

from shared.devstack.demo import SAID, SEED_BODY, Demo, Outcome, describe, seed_curl

KEY = "mibo_" + "A1b2" * 10
ROOT = Path("/home/me/shop/.devstack")
URL = "http://127.0.0.1:8080"


def test_the_curl_is_the_seeds_with_url_and_key() -> None:
    curl = seed_curl(URL, KEY)
    words = shlex.split(curl.replace("\\\n", " "))
    assert words == [
        "curl",
        "-X",
        "POST",
        f"{URL}/public/traces",
        "-H",
        "Content-Type: application/json",
        "-H",
        f"x-api-key: {KEY}",
        "-d",
        '{ "data": { "input": "...", "output": "..." } }',
    ]
    assert words[-1] == SEED_BODY


def test_only_the_up_that_made_the_key_shows_it() -> None:
    made = describe(Demo("created", uuid.uuid4(), KEY), ROOT, URL)
    assert made.count(KEY) == 1 and made.endswith(seed_curl(URL, KEY))
    assert f"{ROOT}/demo-key (mode 0600)" in made and f"MIBO_API_KEY in {ROOT}/env" in made
    found = describe(Demo("exists", uuid.uuid4()), ROOT, URL)
    assert KEY not in found and found.endswith(f". {ROOT}/env\n" + seed_curl("$INGEST_URL", "$MIBO_API_KEY"))


@pytest.mark.parametrize(
    ("outcome", "says"),
    [
        ("revoked", "keys create --project demo"),
        ("taken", "projects delete demo --yes"),
        ("skipped", "dev up --demo"),
    ],
)
def test_no_curl_without_a_key_but_what_to_do(outcome: Outcome, says: str) -> None:
    text = describe(Demo(outcome), ROOT, URL)
    assert says in text and "curl" not in text
    assert SAID[outcome]
