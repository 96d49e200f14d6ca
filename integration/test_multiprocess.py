"""Coherence across OS processes (issue 2, guarantees 2 and 3).

Two worker processes (`_workers.py peer`) and the test process each hold their
own `TwoTierCache` on the same server and namespace. The workers are driven over
their stdin/stdout; the test process's instance is driven through the same
`PeerHandler`, in-process, so all three are exercised alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from twotier import TwoTierCache
from twotier.testing import RedisServer

from ._workers import PeerHandler

WORKERS = Path(__file__).with_name("_workers.py")
NAMESPACE = "mp"
CALL_TIMEOUT = 10.0  # any single request; generous for a loaded machine
PROPAGATION_LIMIT = 2.0  # "within milliseconds", asserted loosely so noise cannot flake it
Json = dict[str, Any]


class WorkerError(AssertionError):
    """A worker answered with an error, died, or did not answer in time."""


class Peer(Protocol):
    name: str

    async def call(self, op: str, **args: Any) -> Json: ...


class LocalPeer:
    """The test process's own instance."""

    def __init__(self, name: str, cache: TwoTierCache) -> None:
        self.name = name
        self.handler = PeerHandler(cache)

    async def call(self, op: str, **args: Any) -> Json:
        async with asyncio.timeout(CALL_TIMEOUT):
            return await self.handler.handle(op, args)


class RemotePeer:
    """A `_workers.py peer` process: requests by id, answered in any order."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, stderr: Path) -> None:
        self.name = name
        self.process = process
        self.stderr = stderr
        loop = asyncio.get_running_loop()
        self._pending: dict[int, asyncio.Future[Json]] = {0: loop.create_future()}  # "ready"
        self._next_id = 0
        self._reader = loop.create_task(self._read_replies())

    @classmethod
    async def spawn(cls, name: str, url: str, stderr: Path) -> RemotePeer:
        with stderr.open("wb") as err:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(WORKERS),
                "peer",
                "--url",
                url,
                "--namespace",
                NAMESPACE,
                "--name",
                name,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
            )
        return cls(name, process, stderr)

    async def ready(self) -> None:
        await self._reply(0)

    async def call(self, op: str, **args: Any) -> Json:
        self._next_id += 1
        request_id = self._next_id
        self._pending[request_id] = asyncio.get_running_loop().create_future()
        assert self.process.stdin is not None
        request = {"id": request_id, "op": op, "args": args}
        self.process.stdin.write(json.dumps(request).encode() + b"\n")
        await self.process.stdin.drain()
        return await self._reply(request_id)

    async def _reply(self, request_id: int) -> Json:
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                reply = await self._pending[request_id]
        except TimeoutError:
            raise WorkerError(
                f"{self.name}: no answer within {CALL_TIMEOUT}s{self._stderr_tail()}"
            ) from None
        finally:
            self._pending.pop(request_id, None)
        if not reply["ok"]:
            raise WorkerError(f"{self.name}: {reply['error']}")
        result: Json = reply["result"]
        return result

    async def _read_replies(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            reply = json.loads(line)
            future = self._pending.get(reply["id"])
            if future is not None and not future.done():
                future.set_result(reply)
        for future in self._pending.values():  # the worker is gone
            if not future.done():
                future.set_exception(WorkerError(f"{self.name} exited{self._stderr_tail()}"))

    def _stderr_tail(self) -> str:
        text = self.stderr.read_text(errors="replace").strip() if self.stderr.exists() else ""
        return f"; its stderr ends with:\n{text[-2000:]}" if text else ""

    async def stop(self) -> None:
        """EOF on stdin asks the worker to close its cache; kill it if it takes long."""
        process = self.process
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()
        try:
            async with asyncio.timeout(3):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


@contextlib.asynccontextmanager
async def three_instances(server: RedisServer, tmp_path: Path) -> AsyncIterator[list[Peer]]:
    """The test process's instance and two worker processes' instances, all started."""
    remotes: list[RemotePeer] = []
    try:
        for name in ("worker-a", "worker-b"):
            remotes.append(await RemotePeer.spawn(name, server.url, tmp_path / f"{name}.err"))
        cache = TwoTierCache(redis_url=server.url, namespace=NAMESPACE, redis_timeout=0.5)
        async with cache:
            await asyncio.gather(*(remote.ready() for remote in remotes))
            here = LocalPeer("test-process", cache)
            try:
                yield [here, *remotes]
            finally:
                await here.handler.aclose()
    finally:
        await asyncio.gather(*(remote.stop() for remote in remotes))


async def _received(peer: Peer) -> int:
    return int((await peer.call("stats"))["invalidations_received"])


async def _everyone_holds(
    origin: Peer, others: list[Peer], key: str, value: str, tags: list[str]
) -> None:
    """*origin* sets key=value; once the others have applied that change, they read it into L1."""
    before = [await _received(peer) for peer in others]
    await origin.call("set", key=key, value=value, tags=tags)
    for peer, count in zip(others, before, strict=True):
        await peer.call("wait_received", at_least=count + 1)
        assert await peer.call("get", key=key) == {"found": True, "value": value}
        assert await peer.call("peek", key=key) == {"found": True, "value": value}, peer.name


CHANGES: dict[str, tuple[str, Json, Json]] = {
    # operation: (op, its arguments, what `get` must answer afterwards)
    "set": ("set", {"value": "new", "tags": ["group"]}, {"found": True, "value": "new"}),
    "delete": ("delete", {}, {"found": False}),
    "invalidate_tag": ("invalidate_tag", {"tag": "group"}, {"found": False}),
    "clear": ("clear", {}, {"found": False}),
}


@pytest.mark.parametrize("operation", list(CHANGES))
async def test_change_in_one_process_reaches_the_others(
    server: RedisServer, tmp_path: Path, operation: str
) -> None:
    """A change made in any of three processes evicts the old value from the others' L1.

    Every process takes its turn as the origin. Before the change both other
    processes hold the old value in L1 (checked), and the TTL is long, so only an
    invalidation message can make them answer differently.
    """
    op, op_args, expected = CHANGES[operation]
    timings: list[str] = []
    async with three_instances(server, tmp_path) as peers:
        for origin in peers:
            others = [peer for peer in peers if peer is not origin]
            key = f"{operation}-from-{origin.name}"
            await _everyone_holds(origin, others, key, "old", ["group"])
            watches = []
            for peer in others:
                armed = await peer.call("arm", key=key, until=expected)
                assert armed["l1"] == {"found": True, "value": "old"}, peer.name
                watches.append(armed["watch"])

            args = {"key": key, **op_args} if op in ("set", "delete") else op_args
            change = await origin.call(op, **args)

            for peer, watch in zip(others, watches, strict=True):
                seen = await peer.call("seen", watch=watch, timeout=PROPAGATION_LIMIT + 1)
                elapsed = seen["seen_at"] - change["start"]
                timings.append(
                    f"{operation:>14} {origin.name:>12} → {peer.name:<12} "
                    f"{elapsed * 1000:7.2f} ms  (the call took "
                    f"{(change['end'] - change['start']) * 1000:.2f} ms)"
                )
                assert elapsed < PROPAGATION_LIMIT, (operation, origin.name, peer.name, elapsed)
    print(
        f"\npropagation on {server.flavour}, from the start of the call until another "
        "process's get() answers the new state:"
    )
    print("\n".join(timings))


ITEM = 7
ITEM_KEY = f"item-{ITEM}"
INVALIDATIONS: dict[str, tuple[str, Json]] = {
    "tag": ("invalidate_tag", {"tag": f"item:{ITEM}"}),
    "key": ("delete", {"key": ITEM_KEY}),
    "clear": ("clear", {}),
}


@pytest.mark.parametrize("invalidation", list(INVALIDATIONS))
async def test_no_stale_set_from_a_slow_loader_in_another_process(
    server: RedisServer, tmp_path: Path, invalidation: str
) -> None:
    """Guarantee 3 across processes.

    Worker A's loader reads the source ("old") and blocks. The source becomes
    "new" and worker B invalidates the item (its tag, its key, or everything).
    A's loader then returns "old". No instance may hold "old" in L1 or L2
    afterwards: a fresh call on each answers "new".
    """
    source = tmp_path / "source.txt"
    source.write_text("old")
    op, op_args = INVALIDATIONS[invalidation]
    async with three_instances(server, tmp_path) as peers:
        _, worker_a, worker_b = peers
        started = await worker_a.call("slow_start", item_id=ITEM, source=str(source))
        assert started["read"] == "old"

        source.write_text("new")
        await worker_b.call(op, **op_args)
        finished = await worker_a.call("slow_finish")
        assert finished["value"] == "old"  # its caller asked before the change: that is fine

        for peer in peers:
            assert await peer.call("peek", key=ITEM_KEY) == {"found": False}, peer.name
            assert (await peer.call("get", key=ITEM_KEY)).get("value") != "old", peer.name
        for peer in peers:
            assert await peer.call("load", item_id=ITEM, source=str(source)) == {"value": "new"}, (
                peer.name
            )
        refused = (await worker_a.call("stats"))["stale_sets_refused"]
        assert refused == 1, refused
