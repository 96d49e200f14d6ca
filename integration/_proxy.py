"""A small TCP proxy on loopback that a test can slow down, jitter, blackhole or reset.

It runs in the test's event loop. `latency` delays every chunk in both
directions; `jitter` (with a seeded `rng`) holds half the chunks for a random
time up to it; `blackhole` keeps connections open but forwards nothing (a
half-open network); `reset()` aborts every connection at once. Each direction
of each connection is one pipe, so ordering within a connection is kept (as
TCP keeps it), while connections overtake each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any


class ChaosProxy:
    def __init__(
        self, target_port: int, *, jitter: float = 0.0, rng: random.Random | None = None
    ) -> None:
        self.target_port = target_port
        self.latency = 0.0
        self.jitter = jitter
        self.rng = rng or random.Random()
        self.blackhole = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def close(self) -> None:
        self.reset()
        if self._server is not None:
            self._server.close()
        for handler in self._handlers:
            handler.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def reset(self) -> None:
        for writer in list(self._writers):
            transport = writer.transport
            if hasattr(transport, "abort"):
                transport.abort()
        self._writers.clear()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            await self._forward(client_r, client_w)
        except asyncio.CancelledError:
            pass  # the proxy closed
        finally:
            self._handlers.discard(handler)

    async def _forward(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.transport.abort()
            return
        self._writers.update((client_w, server_w))
        await asyncio.gather(
            self._pipe(client_r, server_w), self._pipe(server_r, client_w), return_exceptions=True
        )
        for writer in (client_w, server_w):
            self._writers.discard(writer)
            writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await reader.read(65536):
                while self.blackhole:
                    await asyncio.sleep(0.01)
                if self.latency:
                    await asyncio.sleep(self.latency)
                if self.jitter and self.rng.random() < 0.5:
                    await asyncio.sleep(self.rng.uniform(0, self.jitter))
                writer.write(chunk)
                await writer.drain()
