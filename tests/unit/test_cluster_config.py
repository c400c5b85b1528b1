"""The cluster's configuration and the fault helpers' decisions, without a broker."""

from __future__ import annotations

from pathlib import Path

from shared.devstack.cluster import PartitionState, below_min_isr, busiest_leader, fully_in_sync
from shared.devstack.kafka_broker import cluster
from shared.runtime.kafka import creation_errors, min_insync_replicas, topic_config


def _properties(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def test_min_isr_is_all_replicas_but_one() -> None:
    assert [min_insync_replicas(rf) for rf in (1, 2, 3, 5)] == [1, 1, 2, 4]
    config = topic_config(3)
    assert config["min.insync.replicas"] == "2"
    assert config["unclean.leader.election.enable"] == "false"
    assert config["max.message.bytes"] == str(16 * 1024 * 1024)


def test_creation_errors_name_what_was_refused_but_not_what_exists() -> None:
    class Response:
        topic_errors = [
            ("a.traces.raw", 0, None),
            ("a.traces.dlq", 36, "exists"),  # TOPIC_ALREADY_EXISTS: another process was first
            ("a.traces.routed", 38, "Unable to replicate the partition 3 time(s)"),
        ]

    (refused,) = creation_errors(Response())
    assert refused.startswith("a.traces.routed: InvalidReplicationFactorError")
    assert "3 time(s)" in refused
    assert creation_errors(None) == []


def test_a_three_broker_cluster_has_its_own_controller_and_replicates_everything(tmp_path: Path) -> None:
    nodes = cluster(tmp_path, tmp_path / "jars", [9001, 9002, 9003], 9100)
    assert [(n.node_id, n.roles) for n in nodes] == [
        (0, "controller"),
        (1, "broker"),
        (2, "broker"),
        (3, "broker"),
    ]
    for node in nodes:
        node.write_properties()
    controller, first = (_properties(n.properties) for n in nodes[:2])
    assert controller["listeners"] == "CONTROLLER://127.0.0.1:9100"
    assert "inter.broker.listener.name" not in controller
    assert first["listeners"] == "PLAINTEXT://127.0.0.1:9001"
    for props in (controller, first):
        assert props["controller.quorum.voters"] == "0@127.0.0.1:9100"
        assert "controller.quorum.bootstrap.servers" not in props
    assert first["default.replication.factor"] == "3"
    assert first["min.insync.replicas"] == "2"
    assert first["offsets.topic.replication.factor"] == "3"
    assert first["transaction.state.log.min.isr"] == "2"
    assert first["unclean.leader.election.enable"] == "false"
    assert "-Xmx384m" in nodes[1].java() and "-Xmx192m" in nodes[0].java()


def test_which_partitions_are_led_in_sync_or_below_min_isr() -> None:
    full = (1, 2, 3)
    state = {
        0: PartitionState(1, full, full),
        1: PartitionState(2, full, (2, 3)),
        2: PartitionState(2, full, (2,)),
        3: PartitionState(3, full, full),
    }
    assert busiest_leader(state) == 2
    assert busiest_leader({0: PartitionState(3, full, full), 1: PartitionState(1, full, full)}) == 1
    assert below_min_isr(state, 2) == [2]
    assert not fully_in_sync(state)
    assert fully_in_sync({0: PartitionState(1, full, (3, 2, 1))})
    assert not fully_in_sync({0: PartitionState(-1, full, full)})
