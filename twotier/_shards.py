"""Which logged entry changes a cluster shard's master may have lost (issue 21, case 2).

A key's `set` or `delete` changes its entry on the key's shard, then is
announced on the control slot. Redis replicates asynchronously: a shard
master that dies before its replica has the change leaves a promoted replica
without it, and the old entry is back, valid, for every instance (the
announcement evicted it from L1 at the time; the next read brings it back).
The control slot's own losses are covered by a new generation (`meet_server`
in lua/prelude.lua); an entry shard's are repaired here, key by key, from
the change log.

Each entry change in a cluster reports where it stands in its master's
replication stream (`entry_written`: replication id, the offset before it, a
bound on its size), and its announcement keeps that in the log. A master met
by a read pipe's connection (`RedisTier`) is judged against every logged
change of a key it now serves, the latest per key:

* written under its own replication id, before its current offset: it has it;
* written under the replication id it had before its promotion
  (``master_replid2``), wholly before the offset it was promoted at
  (``second_repl_offset``): it has it;
* anything else: it may not — a replica promoted before the change reached
  it, a master taken back after its promoted replica wrote, a node restored
  from an older snapshot. The key's entry is deleted again and announced.

Slots moved to the node by a resharding (MIGRATE keeps the data) look like
the third kind: their keys are deleted once more, a miss each, when the node
is first met — the price of never judging a loss as none.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from ._tier import SEP, Message


class ShardRun(NamedTuple):
    """One master's run and replication history, from `INFO server` and
    `INFO replication`."""

    run_id: str
    replid: str
    offset: int
    replid2: str
    promoted_at: int  # second_repl_offset: the bytes of replid2 it holds end before it

    @classmethod
    def parse(cls, info: str) -> ShardRun | None:
        """The run, or None for anything but a master with a replication history."""
        fields = dict(
            line.split(":", 1) for line in info.splitlines() if ":" in line and line[0] != "#"
        )
        try:
            if fields["role"] != "master":
                return None
            return cls(
                fields["run_id"],
                fields["master_replid"],
                int(fields["master_repl_offset"]),
                fields.get("master_replid2", ""),
                int(fields.get("second_repl_offset", "-1")),
            )
        except (KeyError, ValueError):
            return None

    @property
    def identity(self) -> str:
        """What changes with a restart, a restore or a promotion."""
        return f"{self.run_id}:{self.replid}"

    def holds(self, written: str) -> bool:
        """Whether this run certainly holds the change *written* reports."""
        try:
            replid, offset_text, size_text = written.split(":")
            offset, size = int(offset_text), int(size_text)
        except ValueError:
            return True  # not this format: nothing to judge by
        if replid == self.replid:
            return offset < self.offset
        return replid == self.replid2 and offset + size < self.promoted_at


def latest_writes(rows: Iterable[tuple[Any, Any]] | None) -> dict[str, str]:
    """Key → where its last logged entry change stands, from the log's rows
    (XRANGE, oldest first); changes logged without a position are left out."""
    latest: dict[str, str] = {}
    for _id, fields in rows or ():
        written = fields.get(b"w") if isinstance(fields, dict) else None
        if not isinstance(written, bytes):
            continue
        try:
            message = Message.decode(fields.get(b"m") or b"")
            positions = written.decode().split(SEP)
        except ValueError:  # UnicodeDecodeError too: not ours to judge
            continue
        if message.kind == "k" and len(positions) == len(message.names):
            latest.update(zip(message.names, positions, strict=True))
    return latest
