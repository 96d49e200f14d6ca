"""A parent that uses a module-level cache, then starts children by
`multiprocessing` (``fork``, ``forkserver`` or ``spawn``); all of them change
and read, and each change must reach everyone.

    TWOTIER_REDIS_URL=redis://… TWOTIER_NAMESPACE=ns TWOTIER_DEFAULT_TTL=300 \
        python -m integration.apps.mp_app fork

Two generations of two children each (the parent forks again after the first
pair has gone). In each generation every process takes its turn as the
writer, for each kind of change: it sets a key, every process reads the key
into its L1 (checked), the writer changes it (a set, the seed's un-awaited
tag invalidation, a delete), and every process polls until it answers the new
state, within the propagation window. Prints one JSON report on stdout; exit
status 1 if any process kept answering the old value, or failed.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from integration.apps import mp_worker
from integration.apps.mp_worker import ABSENT

cache = mp_worker.cache

WINDOW = 2.0  # the propagation window: "milliseconds", asserted loosely on a loaded machine


class Peer:
    def __init__(self, name: str, conn: Connection | None = None) -> None:
        self.name = name
        self.conn = conn

    def call(self, op: str, **args: Any) -> Any:
        if self.conn is None:
            return mp_worker.handle(op, args)
        self.conn.send((op, args))
        if not self.conn.poll(30):
            raise AssertionError(f"{self.name}: no answer to {op} within 30 s")
        status, result = self.conn.recv()
        if status != "ok":
            raise AssertionError(f"{self.name}: {op}: {result}")
        return result


def _set(writer: Peer, key: str, tag: str) -> None:
    writer.call("set", key=key, value="new", tags=[tag])


def _invalidate(writer: Peer, key: str, tag: str) -> None:
    writer.call("invalidate", tag=tag)


def _delete(writer: Peer, key: str, tag: str) -> None:
    writer.call("delete", key=key)


#: A change: (the writer's call, what everyone must then answer).
CHANGES: dict[str, tuple[Callable[[Peer, str, str], None], str]] = {
    "set": (_set, "new"),
    "invalidate_tag": (_invalidate, ABSENT),
    "delete": (_delete, ABSENT),
}


def rounds(peers: list[Peer], generation: int, timings: list[dict[str, Any]]) -> None:
    for writer in peers:
        for change, (make, expected) in CHANGES.items():
            key, tag = f"{change}:{writer.name}:{generation}", f"tag:{writer.name}:{generation}"
            others = [peer for peer in peers if peer is not writer]
            heard = [peer.call("received") for peer in others]
            writer.call("set", key=key, value="old", tags=[tag])
            for peer, count in zip(others, heard, strict=True):
                peer.call("await_received", at_least=count + 1, window=WINDOW)
            for peer in peers:
                peer.call("await_value", key=key, expected="old", window=WINDOW)
                held = peer.call("peek", key=key)
                assert held == "old", f"{peer.name} does not hold {key!r} in L1: {held!r}"
            start = time.monotonic()
            make(writer, key, tag)
            returned = time.monotonic() - start
            for peer in peers:
                took = peer.call("await_value", key=key, expected=expected, window=WINDOW)
                timings.append(
                    {
                        "change": change,
                        "writer": writer.name,
                        "reader": peer.name,
                        "call_ms": round(returned * 1000, 2),
                        "seen_after_ms": round(took * 1000, 2),
                    }
                )


def main(method: str) -> int:
    ctx = multiprocessing.get_context(method)
    if method == "forkserver":
        # The fork server imports the worker module, and with it makes a cache,
        # before it forks every child: an application preloaded there.
        ctx.set_forkserver_preload(["integration.apps.mp_worker"])
    # The parent makes and uses its cache before any child exists.
    cache.sync.set("parent", "ready", tags=["parent"])
    assert cache.sync.get("parent") == "ready"
    parent = Peer("parent")
    report: dict[str, Any] = {"method": method, "identities": [], "timings": [], "error": None}
    report["identities"].append(parent.call("identity"))
    try:
        for generation in (1, 2):
            children, peers = [], [parent]
            for i in (1, 2):
                mine, theirs = ctx.Pipe()
                process = ctx.Process(  # type: ignore[attr-defined]  # typeshed's BaseContext
                    target=mp_worker.serve, args=(theirs,), daemon=True
                )
                process.start()
                children.append(process)
                peers.append(Peer(f"child{generation}.{i}", mine))
            before = [peer.call("identity") for peer in peers[1:]]  # before any use
            for peer in peers[1:]:
                peer.call("start")
            rounds(peers, generation, report["timings"])
            for peer, first in zip(peers[1:], before, strict=True):
                identity = peer.call("identity")
                assert identity["instance"] == first["instance"], (first, identity)
                report["identities"].append(identity)
            for peer in peers[1:]:
                peer.call("close")
            for process in children:
                process.join(10)
                assert process.exitcode == 0, f"a child exited with {process.exitcode}"
        report["identities"].append(parent.call("identity"))  # the parent, after the forks
        assert cache.sync.get("parent") == "ready"
    except AssertionError as exc:
        report["error"] = str(exc)
    finally:
        cache.sync.close()
    print(json.dumps(report), flush=True)
    return 0 if report["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
