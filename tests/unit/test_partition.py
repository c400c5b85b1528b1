"""The traces.raw partitioner computes Kafka's own partition for a key (aiokafka's port of the
Java client's murmur2 is the reference), for every key length and for keys as the API makes them."""

from __future__ import annotations

import random
import uuid

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as reference

from shared.contracts.envelope import message_key
from shared.runtime.partition import key_partitioner, murmur2, partition_for


def test_murmur2_matches_the_java_port_for_every_length() -> None:
    rng = random.Random(16)
    for length in range(0, 700):
        for _ in range(3):
            data = rng.randbytes(length)
            assert murmur2(data) == reference(data), length


def test_murmur2_of_known_inputs() -> None:
    # values of org.apache.kafka.common.utils.Utils.murmur2 (as unsigned 32-bit)
    assert murmur2(b"") == reference(b"") == 275646681
    assert murmur2(b"21") == reference(b"21") == (-973932308) & 0xFFFFFFFF


def test_partition_of_api_keys_is_the_default_partitioners() -> None:
    default = DefaultPartitioner()
    for partitions in (1, 3, 6, 12):
        ids = list(range(partitions))
        for i in range(300):
            external = None if i % 2 else f"ext-{i}-" + "x" * (i % 40)
            key = message_key(uuid.uuid4(), external, uuid.uuid4())
            expected = default(key, ids, ids)
            assert partition_for(key, partitions) == expected
            assert key_partitioner(key, list(reversed(ids)), ids) == expected


def test_a_keyless_record_goes_to_an_available_partition() -> None:
    for _ in range(50):
        assert key_partitioner(None, [0, 1, 2, 3], [1, 3]) in (1, 3)
        assert key_partitioner(None, [0, 1, 2], []) in (0, 1, 2)
