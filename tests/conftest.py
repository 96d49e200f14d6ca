"""Fixtures of the server-free suite."""

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from twotier import TwoTierCache, _batch, _channel
from twotier._batch import Push


@pytest.fixture
async def trio() -> AsyncIterator[list[TwoTierCache]]:
    """Three started memory-mode caches, coherent with each other over one in-process hub."""
    namespace = f"t{uuid.uuid4().hex[:8]}"  # instances of one test share a hub, tests do not
    caches = [TwoTierCache(namespace=namespace) for _ in range(3)]
    for cache in caches:
        await cache.start()
    yield caches
    for cache in caches:
        await cache.close()


def unique_namespace() -> str:
    """A namespace no other test uses (memory-mode instances of one namespace share a hub)."""
    return f"u{uuid.uuid4().hex[:8]}"


@pytest.fixture
def cache() -> Iterator[TwoTierCache]:
    """One memory-mode cache, not started (sync callers start it on first use), closed after."""
    made = TwoTierCache(namespace=unique_namespace())
    yield made
    made.close_blocking()


@pytest.fixture(params=["hiredis", "hand-written"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The reply reader of `read_replies` and the channel: hiredis' (the
    default when installed, as here) or the hand-written one (tests/test_batch.py,
    tests/test_mutants_channel.py)."""
    if request.param == "hiredis":
        if _batch._HIREDIS is None:  # not installed, or older than the reader needs
            pytest.skip("hiredis' reader is not in use here (see _batch._hiredis)")
    else:
        monkeypatch.setattr(_batch, "new_reader", _batch.Reader, raising=False)
        monkeypatch.setattr(_batch, "_PUSH", Push, raising=False)
        monkeypatch.setattr(_channel, "new_reader", _batch.Reader, raising=False)
    return str(request.param)


class Handed:
    """What the `handed` fixture counts."""

    calls = 0
    size = 0  # bytes from the parse position to the buffer's end, summed over calls


@pytest.fixture
def handed(monkeypatch: pytest.MonkeyPatch) -> Handed:
    """Counts every call of the hand-written parser and the bytes it is handed."""
    seen = Handed()
    real = _batch.parse

    def counting(buf: bytes, pos: int, *stack: Any) -> tuple[Any, int]:
        seen.calls += 1
        seen.size += len(buf) - pos
        return real(buf, pos, *stack)

    monkeypatch.setattr(_batch, "parse", counting)
    monkeypatch.setattr(_channel, "parse", counting, raising=False)  # (it had its own name)
    return seen
