"""`_shards.py`: which logged entry changes a cluster shard master may have lost.

The replication facts are Redis's (PSYNC2): a promoted replica takes a new
replication id, keeps its old master's as ``master_replid2``, and holds that
history up to ``second_repl_offset`` (exclusive). A change logged at offset
O with a size bound S is held by such a node only if O + S is below it."""

from __future__ import annotations

from twotier._shards import ShardRun, latest_writes
from twotier._tier import SEP, Message

OLD, NEW = "a" * 40, "b" * 40


def _info(role: str = "master", **fields: str) -> str:
    lines = ["# Server", "run_id:" + "f" * 40, "# Replication", f"role:{role}"]
    defaults = {
        "master_replid": NEW,
        "master_replid2": OLD,
        "master_repl_offset": "5000",
        "second_repl_offset": "1001",
    }
    lines += [f"{name}:{value}" for name, value in {**defaults, **fields}.items()]
    return "\r\n".join(lines) + "\r\n"


def test_a_promoted_replica_is_read_from_info() -> None:
    run = ShardRun.parse(_info())
    assert run == ShardRun("f" * 40, NEW, 5000, OLD, 1001)
    assert run.identity == "f" * 40 + ":" + NEW


def test_only_a_master_is_judged() -> None:
    assert ShardRun.parse(_info(role="slave")) is None
    assert ShardRun.parse("# Replication\r\nrole:master\r\n") is None  # no history given
    assert ShardRun.parse(_info(master_repl_offset="x")) is None


def test_a_change_the_replica_had_when_promoted_is_held() -> None:
    run = ShardRun("r", NEW, 5000, OLD, 1001)
    assert run.holds(f"{OLD}:400:600")  # bytes 400..1000: before the promotion
    assert not run.holds(f"{OLD}:401:600")  # may end at byte 1001: not held
    assert not run.holds(f"{OLD}:2000:600")  # acknowledged by the old master only


def test_a_change_under_the_current_id_is_held_only_below_the_current_offset() -> None:
    run = ShardRun("r", NEW, 5000, OLD, 1001)
    assert run.holds(f"{NEW}:4999:600")
    # the same id but an offset the node has not reached: restored from before it
    assert not run.holds(f"{NEW}:5000:600")


def test_a_change_under_an_id_the_node_never_had_is_not_held() -> None:
    """A master taken back after its promoted replica wrote (issue 21, case 1's
    sequence on an entry shard), or slots moved in by a resharding: judged lost,
    so deleted again (a miss), never kept."""
    run = ShardRun("r", NEW, 5000, OLD, 1001)
    assert not run.holds(f"{'c' * 40}:10:600")


def test_a_position_of_another_format_is_not_judged() -> None:
    assert ShardRun("r", NEW, 5000, OLD, 1001).holds("")
    assert ShardRun("r", NEW, 5000, OLD, 1001).holds("x:y")


def _row(
    seq: int, keys: tuple[str, ...], written: list[str] | None
) -> tuple[bytes, dict[bytes, bytes]]:
    fields = {b"m": Message("k", keys, "origin", seq).encode()}
    if written is not None:
        fields[b"w"] = SEP.join(written).encode()
    return f"{seq}-1".encode(), fields


def test_the_latest_logged_position_of_each_key_counts() -> None:
    rows = [
        _row(1, ("a", "b"), [f"{OLD}:1:9", f"{OLD}:2:9"]),
        _row(2, ("a",), [f"{NEW}:3:9"]),
        _row(3, ("c",), None),  # logged without a position (not a cluster): not judged
        (b"4-1", {b"m": Message("t", ("tag",), "o", 4, ("7",)).encode(), b"w": b"x"}),
        (b"5-1", {b"m": b"\xff", b"w": b"y"}),  # not ours: skipped, not raised
        _row(6, ("d", "e"), [f"{OLD}:4:9"]),  # positions that do not match the keys
    ]
    assert latest_writes(rows) == {"a": f"{NEW}:3:9", "b": f"{OLD}:2:9"}
    assert latest_writes(None) == {}
