"""The observer seam: what the cache tells metrics and tracing, and nothing else.

The cache holds one `Events`, a fan-out over the `Observer`s it was given
(`TwoTierCache(observers=[...])`, or added later by `twotier.prometheus` /
`twotier.otel`). The core calls it at a handful of points — an L2 read, a
loader run, a wait on another instance's fill lease, an invalidation received,
a resync, a breaker change — and around `get` and decorated calls when an
observer traces. Counters and gauges are not events: exporters read
`get_stats()` at scrape time, so the L1 hit path pays nothing for being
observed (STYLE.md 17).

Guarantees: an observer that raises never breaks a cache call (the error is
logged once per observer and method, then ignored); with no observers each hook
costs one truth test. Observers run on the cache's event loop and must not block.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Literal, Protocol, TypeVar

from ._logging import Log
from ._types import MISS

T = TypeVar("T")

L2Outcome = Literal["hit", "miss", "error"]
BreakerChange = Literal["open", "closed"]


class Read:
    """One traced read (`get` or a decorated call), filled in as it goes.

    `tier` is where the value came from: "l1", "l2", "loader" (this call ran
    the loader), "joined" (a decorated call that waited for another caller's
    load of the key), or "none" (a `get` that missed both tiers).
    `key_digest` is a short SHA-256 of the key: keys can hold customer numbers
    or e-mail addresses, which do not belong in a tracing backend.
    """

    __slots__ = ("function", "hit", "key_digest", "operation", "tags", "tier")

    def __init__(self, operation: str, key: str, tags: Sequence[str], function: str) -> None:
        self.operation = operation  # "get" or "cached"
        self.function = function  # the decorated function's qualified name, or ""
        self.key_digest = key_digest(key)
        self.tags = tuple(tags)
        self.tier = "l1"
        self.hit = True


def key_digest(key: str) -> str:
    """The first 16 hex digits of the key's SHA-256: enough to correlate, not to read."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class Observer(Protocol):
    """What an observer of a cache implements. Subclass `BaseObserver` to
    implement only some of it. Every method is called on the cache's loop."""

    #: Whether `span` should be called at all; a metrics-only observer says False
    #: and reads pay nothing for tracing.
    traces: bool

    def l2_read(self, seconds: float, outcome: L2Outcome) -> None:
        """An L2 read finished: a hit, a miss, or an error (Redis away or refusing)."""

    def loaded(self, seconds: float, ok: bool) -> None:
        """A loader (the decorated function, on a miss) finished or raised."""

    def lease_waited(self, seconds: float) -> None:
        """This instance waited for another instance's fill lease (its loader)."""

    def invalidation_received(self, kind: str, lag: float | None) -> None:
        """A change from another instance arrived (kind "k", "t" or "c"); *lag* is
        now minus the sender's wall-clock send time, None when the message carries none."""

    def resynced(self, reason: str) -> None:
        """The invalidation link resynchronised (a gap, a reconnect, a restart)."""

    def breaker_changed(self, state: BreakerChange) -> None:
        """The circuit breaker around Redis opened or closed."""

    def span(self, name: str, read: Read | None) -> contextlib.AbstractContextManager[object]:
        """A span around a read ("twotier.get", "twotier.cached", with *read*),
        a loader run ("twotier.load") or a lease wait ("twotier.lease_wait").
        *read* is final when the context exits."""
        ...


class BaseObserver:
    """An `Observer` that ignores everything; override what you need."""

    traces = False

    def l2_read(self, seconds: float, outcome: L2Outcome) -> None:
        pass

    def loaded(self, seconds: float, ok: bool) -> None:
        pass

    def lease_waited(self, seconds: float) -> None:
        pass

    def invalidation_received(self, kind: str, lag: float | None) -> None:
        pass

    def resynced(self, reason: str) -> None:
        pass

    def breaker_changed(self, state: BreakerChange) -> None:
        pass

    def span(self, name: str, read: Read | None) -> contextlib.AbstractContextManager[object]:
        return contextlib.nullcontext()


#: The read being traced in this task, so the events inside it can say which
#: tier answered.
_current: contextvars.ContextVar[Read | None] = contextvars.ContextVar("twotier_read", default=None)
#: Set by `Events.read` just before it awaits the traced call, which re-enters
#: `get` (or the decorated call) and must then run untraced; see `reentering`.
_reentry: contextvars.ContextVar[bool] = contextvars.ContextVar("twotier_reentry", default=False)


class Events:
    """The cache's fan-out to its observers. Every hook is a no-op without them."""

    def __init__(self, observers: Sequence[Observer], log: Log) -> None:
        self._observers: list[Observer] = []
        self._log = log
        self._failed: set[tuple[int, str]] = set()
        self.tracing = False
        for observer in observers:
            self.add(observer)

    def add(self, observer: Observer) -> None:
        """Attach one more observer (what `twotier.prometheus.instrument` does)."""
        self._observers.append(observer)
        self.tracing = any(getattr(o, "traces", False) for o in self._observers)

    def remove(self, observer: Observer) -> None:
        with contextlib.suppress(ValueError):
            self._observers.remove(observer)
        self.tracing = any(getattr(o, "traces", False) for o in self._observers)

    def __bool__(self) -> bool:
        return bool(self._observers)

    def _emit(self, method: str, *args: Any) -> None:
        for observer in self._observers:
            try:
                getattr(observer, method)(*args)
            except Exception as exc:
                self._failed_once(observer, method, exc)

    def _failed_once(self, observer: Observer, method: str, exc: Exception) -> None:
        mark = (id(observer), method)
        if mark not in self._failed:
            self._failed.add(mark)
            self._log.warning(
                "observer %r failed in %s (logged once; the cache carries on): %r",
                observer,
                method,
                exc,
            )

    # -- timed awaits: one-line wrappers for the core --------------------------------

    async def l2_read(self, read: Awaitable[T]) -> T:
        """Await an L2 read (the entry's bytes, or None), timed; a raise is an "error" outcome."""
        if not self._observers:
            return await read
        start = time.perf_counter()
        try:
            result = await read
        except Exception:
            self._emit("l2_read", time.perf_counter() - start, "error")
            current = _current.get()
            if current is not None and current.tier != "loader":
                current.tier, current.hit = "none", False
            raise
        hit = result is not None  # an entry was there (judged current or not)
        self._emit("l2_read", time.perf_counter() - start, "hit" if hit else "miss")
        current = _current.get()
        if current is not None and current.tier != "loader":
            current.tier, current.hit = ("l2", True) if hit else ("none", False)
        return result

    async def load(self, loader: Callable[[], Awaitable[T]]) -> T:
        """Run the loader, timed (and in a "twotier.load" span when tracing)."""
        if not self._observers:
            return await loader()
        current = _current.get()
        if current is not None:
            current.tier, current.hit = "loader", False
        with self._spans("twotier.load", None):
            start = time.perf_counter()
            try:
                value = await loader()
            except BaseException:
                self._emit("loaded", time.perf_counter() - start, False)
                raise
            self._emit("loaded", time.perf_counter() - start, True)
        return value

    async def lease_wait(self, wait: Awaitable[T]) -> T:
        """Await a wait for another instance's loader, timed."""
        if not self._observers:
            return await wait
        with self._spans("twotier.lease_wait", None):
            start = time.perf_counter()
            try:
                return await wait
            finally:
                self._emit("lease_waited", time.perf_counter() - start)

    # -- plain notifications -------------------------------------------------------

    def invalidation_received(self, message: object) -> None:
        """A message from another instance was applied to L1. The propagation lag
        is measured from the message's `sent_at` (sender's `time.time()`) if it has one."""
        if not self._observers:
            return
        sent_at = getattr(message, "sent_at", None)
        lag = max(0.0, time.time() - float(sent_at)) if sent_at else None
        self._emit("invalidation_received", str(getattr(message, "kind", "?")), lag)

    def resynced(self, reason: str) -> None:
        if self._observers:
            self._emit("resynced", reason)

    def breaker_changed(self, state: BreakerChange) -> None:
        if self._observers:
            self._emit("breaker_changed", state)

    # -- spans around reads ----------------------------------------------------------

    def l1_missed(self) -> None:
        """A traced decorated call missed L1: unless an L2 read or a load of its
        own follows, it waited for another caller's load ("joined")."""
        current = _current.get()
        if current is not None:
            current.tier, current.hit = "joined", False

    def reentering(self) -> bool:
        """True in the `get` that `Events.get` is awaiting (consumed on the first check)."""
        if _reentry.get():
            _reentry.set(False)
            return True
        return False

    async def get(self, key: str, call: Awaitable[Any], default: Any) -> Any:
        """Await *call* — the same `get`, re-entered with `MISS` as its default —
        inside the observers' "twotier.get" spans, and return what `get` returns.

        The core checks `tracing and not reentering()` first and hands itself
        to this method; `reentering()` lets the re-entered call run untraced.
        Re-entering keeps the core's `get` one piece, so the hook is two lines.
        """
        token = _reentry.set(True)
        try:
            value = await self.read("get", key, (), call)
        finally:
            _reentry.reset(token)
        return default if value is MISS else value

    async def read(
        self, operation: str, key: str, tags: Sequence[str], call: Awaitable[T], function: str = ""
    ) -> T:
        """Await *call* inside the observers' `twotier.<operation>` spans; the L2
        reads and loads inside it say which tier answered."""
        read = Read(operation, key, tags, function)
        token = _current.set(read)
        try:
            with self._spans(f"twotier.{operation}", read):
                value = await call
                if value is MISS:
                    read.tier, read.hit = "none", False
                return value
        finally:
            _current.reset(token)

    @contextlib.contextmanager
    def _spans(self, name: str, read: Read | None) -> Iterator[None]:
        if not self.tracing:
            yield
            return
        with contextlib.ExitStack() as stack:
            for observer in self._observers:
                if getattr(observer, "traces", False):
                    stack.enter_context(_Guarded(self, observer, name, read))
            yield


class _Guarded:
    """An observer's span, entered and exited so that neither a raise in it nor
    a `True` from its `__exit__` can change what the cache call does."""

    __slots__ = ("_events", "_inner", "_name", "_observer", "_read")

    def __init__(self, events: Events, observer: Observer, name: str, read: Read | None) -> None:
        self._events, self._observer, self._name, self._read = events, observer, name, read
        self._inner: contextlib.AbstractContextManager[object] | None = None

    def __enter__(self) -> None:
        try:
            inner = self._observer.span(self._name, self._read)
            inner.__enter__()
        except Exception as exc:
            self._events._failed_once(self._observer, "span", exc)
        else:
            self._inner = inner

    def __exit__(self, *exc_info: Any) -> None:
        if self._inner is not None:
            try:
                self._inner.__exit__(*exc_info)
            except Exception as exc:
                self._events._failed_once(self._observer, "span", exc)
