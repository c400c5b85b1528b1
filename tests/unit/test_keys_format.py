"""Key format, hashing and masking (pure, no I/O)."""

from __future__ import annotations

from shared.contracts.keys import KEY_RE, generate_key, hash_key, is_well_formed, last4, masked


def test_generated_keys_match_the_format_and_never_collide() -> None:
    keys = {generate_key() for _ in range(2000)}
    assert len(keys) == 2000
    assert all(KEY_RE.match(k) for k in keys)


def test_well_formed() -> None:
    assert is_well_formed(generate_key())
    for bad in (
        "",
        "mibo_",
        "mibo_short",
        "MIBO_" + "a" * 40,
        "mibo_" + "a" * 31,
        "mibo_" + "-" * 40,
        "mibo_" + "a" * 200,
    ):
        assert not is_well_formed(bad)


def test_hash_is_keyed_and_stable() -> None:
    key = generate_key()
    assert hash_key("p1", key) == hash_key("p1", key)
    assert hash_key("p1", key) != hash_key("p2", key)
    assert len(hash_key("p1", key)) == 32


def test_masked_shows_only_last_four() -> None:
    key = generate_key()
    assert masked(last4(key)) == "mibo_..." + key[-4:]
