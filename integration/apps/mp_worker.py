"""The cache of `mp_app.py`'s processes and the command loop of its children.

The cache is `from twotier import cache`, the module-level default instance,
configured by `TWOTIER_*` variables: made when `twotier` is imported, in the
parent before it forks (`fork`), in the fork server when it preloads this
module (`forkserver`: every child is forked from there), or in each child
again (`spawn`).
"""

from __future__ import annotations

import os
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from twotier import MISS
from twotier import cache as cache  # (the apps use it through this module)

ABSENT = "<absent>"


async def _peek(key: str) -> Any:
    value = cache.local.get(key)  # on the cache's loop: L1 is the loop's alone
    return ABSENT if value is MISS else value


def received() -> int:
    """Changes of other instances this one has heard."""
    return int(cache.sync.get_stats()["invalidations_received"])


def handle(op: str, args: dict[str, Any]) -> Any:
    """One command, run by the blocking API as a Flask view or a Celery task would."""
    if op == "identity":
        thread = next(
            (t.name for t in threading.enumerate() if t.name.startswith("twotier-")), None
        )
        return {"instance": cache.instance_id, "pid": os.getpid(), "loop_thread": thread}
    if op == "read":
        return cache.sync.get(args["key"], ABSENT)
    if op == "peek":
        return cache.sync.run(lambda: _peek(args["key"]))
    if op == "set":
        cache.sync.set(args["key"], args["value"], tags=args.get("tags", ()))
        return None
    if op == "invalidate":
        cache.invalidate_tag(args["tag"])  # the seed's un-awaited call shape
        return None
    if op == "delete":
        cache.sync.delete(args["key"])
        return None
    if op == "start":
        cache.sync.ping()  # the first use: connects, subscribes
        return None
    if op == "received":
        return received()
    if op == "await_received":
        # The change message of another's set: until it is in, it may evict the
        # entry this instance has just read (the read can outrun the message).
        deadline = time.monotonic() + args["window"]
        while received() < args["at_least"]:
            if time.monotonic() > deadline:
                raise AssertionError(f"pid {os.getpid()}: no change message within the window")
            time.sleep(0.002)
        return None
    if op == "await_value":
        # Poll until the value is the expected one; a deadline, never a timed assertion.
        start = time.monotonic()
        seen = []
        while True:
            value = cache.sync.get(args["key"], ABSENT)
            if value == args["expected"]:
                return time.monotonic() - start
            if value not in seen:
                seen.append(value)
            if time.monotonic() - start > args["window"]:
                raise AssertionError(
                    f"pid {os.getpid()} instance {cache.instance_id}: {args['key']!r} still "
                    f"{value!r} after {args['window']} s (saw {seen}), expected "
                    f"{args['expected']!r}"
                )
            time.sleep(0.002)
    if op == "stats":
        return cache.sync.get_stats()
    if op == "close":
        cache.sync.close()
        return None
    raise ValueError(f"unknown operation {op!r}")


def serve(conn: Connection) -> None:
    """A child: commands from the parent over *conn* until "close"."""
    while True:
        op, args = conn.recv()
        try:
            conn.send(("ok", handle(op, args)))
        except Exception as exc:  # reported to the parent, which fails the run
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        if op == "close":
            return
