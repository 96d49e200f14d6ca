"""`cache.sync`: a blocking view of the same cache, for Flask, Django, Celery
and scripts.

Same L1, same Redis link: every call is handed to the cache's event loop
thread-safely and the calling thread waits for the result. When no loop runs
the cache (a plain script, a WSGI worker), the cache gets a loop thread of its
own (`_portal.LoopThread`). Calling the view from the cache's own loop thread
would wait on itself: that is an `EventLoopError`, never a deadlock.

A `@cache.sync.cached` function runs in the calling thread, not on the loop:
Django's database connections and Flask's request context are per thread.
The cache's load path (single flight, fill lease, no-stale-set guard) runs on
the loop as for async functions; when it needs the value, it asks the waiting
caller to run the function and hand the result back.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import contextvars
import functools
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar

from ._exceptions import CacheClosedError, ConfigurationError, EventLoopError
from ._portal import LoopThread, native_lock, new_future, submit, wait

if TYPE_CHECKING:
    from ._decorator import CachedFunction

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def _answer(future: concurrent.futures.Future[None]) -> None:
    """Answer *future* unless something (the loop thread's end) answered it first."""
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        future.set_result(None)


class AsyncCache(Protocol):
    """The async cache a `SyncCache` is the blocking view of (`TwoTierCache`).

    Typed against this, not the cache class, so that `_sync` never imports
    `_cache`, which builds the view (DESIGN §3: no import circle).
    """

    @property
    def instance_id(self) -> str: ...

    @property
    def closed(self) -> bool: ...

    @property
    def closing(self) -> asyncio.Future[None] | None: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None: ...

    @property
    def sync(self) -> SyncCache: ...

    #: `TwoTierCache.cached`: the view passes its options through.
    @property
    def cached(
        self,
    ) -> Callable[..., Callable[[Callable[..., Awaitable[Any]]], CachedFunction[..., Any]]]: ...

    async def get(self, key: str, default: Any = None) -> Any: ...

    async def set(
        self, key: str, value: Any, ttl: float | None = None, tags: Iterable[str] = ()
    ) -> None: ...

    async def delete(self, key: str) -> None: ...

    def invalidate_tags(self, tags: Iterable[str]) -> Awaitable[None]: ...

    async def clear(self) -> None: ...

    async def warmup(
        self, keys: Iterable[str], loader: Callable[[str], Any], concurrency: int = 16
    ) -> int: ...

    def get_stats(self) -> dict[str, Any]: ...

    async def ping(self) -> float: ...

    async def close(self) -> None: ...


class _Handoff:
    """A blocked caller's offer to run its function when its own load asks."""

    __slots__ = ("request", "task")

    def __init__(self) -> None:
        self.request: concurrent.futures.Future[asyncio.Future[Any]] = new_future()
        self.task: asyncio.Task[Any] | None = None  # the caller's task on the loop


#: The handoff of the sync call a load runs for (absent for background refreshes).
_HANDOFF: contextvars.ContextVar[_Handoff | None] = contextvars.ContextVar(
    "twotier_handoff", default=None
)


class SyncCache:
    """The blocking API of one `TwoTierCache` (see DESIGN §2b)."""

    def __init__(self, cache: AsyncCache) -> None:
        self._cache = cache
        self._loop_thread: LoopThread | None = None  # when no loop runs the cache
        self._closes_at_exit = False  # (a forked child inherits the registration)
        # The view's calls running on the cache's loop (touched on the loop only),
        # and those handed over and not yet answered (from any thread): `close()`
        # settles both, so no caller waits on a loop that has stopped.
        self._calls: set[asyncio.Task[Any]] = set()
        self._unanswered: set[concurrent.futures.Future[Any]] = set()
        self._unanswered_lock = native_lock()  # (taken in the loop's thread too, even under gevent)

    def submit(
        self, make: Callable[[], Coroutine[Any, Any, T]]
    ) -> tuple[concurrent.futures.Future[T], asyncio.AbstractEventLoop]:
        """Hand a coroutine of the cache to its loop; return the future and the loop.

        The cache's loop if it runs (in another thread); else a loop thread of
        this view's own, on which the cache then lives.
        """
        cache = self._cache
        if cache.closed:
            raise CacheClosedError("this TwoTierCache was closed")
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        owner = cache.loop
        if running is not None and running is owner:
            raise EventLoopError(
                "a blocking cache.sync call from the cache's own event loop would wait on "
                "itself; await the async method instead"
            )
        if owner is not None and owner.is_running():
            loop = owner
        else:
            if self._loop_thread is None:
                self._loop_thread = LoopThread(f"twotier-{cache.instance_id}")
                if not self._closes_at_exit:
                    atexit.register(self._close_at_exit)
                    self._closes_at_exit = True
            loop = self._loop_thread.started()
        call = self._tracked(make)
        try:
            future: concurrent.futures.Future[T] = submit(call, loop)
        except RuntimeError:  # the loop closed since: the cache was closed meanwhile
            call.close()
            raise CacheClosedError("this TwoTierCache was closed") from None
        with self._unanswered_lock:
            self._unanswered.add(future)
        future.add_done_callback(self._answered)
        return future, loop

    def run(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run a coroutine of the cache from synchronous code and wait for it."""
        future = self.submit(make)[0]
        wait([future])
        return future.result()

    async def _tracked(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        task = asyncio.current_task()
        assert task is not None
        self._calls.add(task)
        try:
            return await make()
        except asyncio.CancelledError:
            if self._cache.closed:  # cancelled by `settle_calls`
                raise CacheClosedError(
                    "this TwoTierCache was closed while the call was in progress"
                ) from None
            raise
        finally:
            self._calls.discard(task)

    def _answered(self, future: concurrent.futures.Future[Any]) -> None:
        with self._unanswered_lock:
            self._unanswered.discard(future)

    async def settle_calls(self, grace: float) -> None:
        """The cache is closing (on its loop): every call of this view in flight ends.

        Calls are given *grace* seconds to end by themselves (a lease waiter has been
        woken, a load is computing its value in its caller's thread); those
        still running are then cancelled, and their callers get
        `CacheClosedError` (or their own function's value, if it ran to its
        end). A cancelled load gives its fill lease back, in a delivery the
        cache's close waits for while it can still reach Redis (issue 18, item 4).
        """
        current = asyncio.current_task()
        calls = {task for task in self._calls if task is not current}
        if not calls:
            return
        _, running = await asyncio.wait(calls, timeout=grace)
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=grace)

    def _wait_for_close(self) -> None:
        """The cache is closed, or closing in another thread: wait until that
        close has ended, before this thread may stop the loop it runs on."""
        owner = self._cache.loop
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if owner is None or owner is running or not owner.is_running():
            return
        future: concurrent.futures.Future[None] = concurrent.futures.Future()

        def wait_there() -> None:  # on the cache's loop, where its close runs
            closing = self._cache.closing
            if closing is None or closing.done():
                _answer(future)
            else:
                closing.add_done_callback(lambda _: _answer(future))

        try:
            # A callback, not a coroutine: the loop may stop before it runs,
            # and a coroutine never started is a warning.
            owner.call_soon_threadsafe(wait_there)
        except RuntimeError:  # that loop closed meanwhile: so did the close
            return
        # The closing thread may stop the loop before it runs this: then the
        # loop thread's end fails what it left unanswered, this too. Registered
        # first, checked after: a loop that stopped in between is not waited
        # on (a closer waited forever on it, 1 run in a few, found by review).
        with self._unanswered_lock:
            self._unanswered.add(future)
        future.add_done_callback(self._answered)
        if not owner.is_running():
            return
        with contextlib.suppress(Exception):
            wait([future])
            future.result()

    def _abandon_unanswered(self) -> None:
        """The view's loop thread has ended: calls handed to it that it never
        ran would wait forever. They get `CacheClosedError`."""
        with self._unanswered_lock:
            unanswered, self._unanswered = self._unanswered, set()
        for future in unanswered:
            # (set, not cancelled: a cancel would reach for the closed loop)
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                future.set_exception(
                    CacheClosedError("this TwoTierCache was closed before the call could run")
                )

    def forget_loop_thread(self) -> LoopThread | None:
        """In a forked child: the parent's loop thread does not run here. The
        next call starts one of the child's own; the parent's is returned, for
        the child to keep untouched (`_cache._INHERITED`)."""
        thread, self._loop_thread = self._loop_thread, None
        # The calls in flight are the parent's threads', on the parent's loop:
        # the child's close() must neither wait on them nor cancel them. (A new
        # lock too: another thread may have held this one at the fork.)
        self._calls = set()
        self._unanswered = set()
        self._unanswered_lock = native_lock()
        return thread

    def _close_at_exit(self) -> None:
        # A script that never closed its cache: deliver what it queued, then stop.
        thread = self._loop_thread
        if thread is not None and thread.loop is self._cache.loop and not self._cache.closed:
            with contextlib.suppress(Exception):
                self.close()

    def get(self, key: str, default: Any = None) -> Any:
        return self.run(lambda: self._cache.get(key, default))

    def set(self, key: str, value: Any, ttl: float | None = None, tags: Iterable[str] = ()) -> None:
        self.run(lambda: self._cache.set(key, value, ttl, tags))

    def delete(self, key: str) -> None:
        self.run(lambda: self._cache.delete(key))

    def invalidate_tag(self, tag: str) -> None:
        self.invalidate_tags((tag,))

    def invalidate_tags(self, tags: Iterable[str]) -> None:
        tags_t = tuple(tags)

        async def invalidate() -> None:
            await self._cache.invalidate_tags(tags_t)

        self.run(invalidate)

    def clear(self) -> None:
        self.run(self._cache.clear)

    def warmup(
        self, keys: Iterable[str], loader: Callable[[str], Any], concurrency: int = 16
    ) -> int:
        key_list = list(keys)
        return self.run(lambda: self._cache.warmup(key_list, loader, concurrency))

    def get_stats(self) -> dict[str, Any]:
        return self.run(self._stats)

    async def _stats(self) -> dict[str, Any]:
        return self._cache.get_stats()

    def ping(self) -> float:
        return self.run(self._cache.ping)

    def close(self) -> None:
        """Close the cache and end this view's loop thread, if it has one.

        From any thread: the calls in flight end (a value, or
        `CacheClosedError`), within the bounds of `TwoTierCache.close()`.
        """
        if not self._cache.closed:
            with contextlib.suppress(CacheClosedError):  # another thread closed it meanwhile
                self.run(self._cache.close)
        else:
            self._wait_for_close()
        thread = self._loop_thread
        if thread is not None and thread.stop():
            self._abandon_unanswered()

    def cached(
        self,
        ttl: float | None = None,
        tags: Iterable[str] = (),
        key: str | Callable[..., str] | None = None,
        **options: Any,
    ) -> Callable[[Callable[P, R]], SyncCachedFunction[P, R]]:
        """`@cached` for plain `def` functions; the options of the async one but
        `soft_timeout`, which would answer the caller before its function ends,
        and so run the function in another thread (docs/sync.md)."""
        if options.get("soft_timeout") is not None:
            raise ConfigurationError(
                "soft_timeout is not available on cache.sync.cached: the function runs in "
                "the caller's thread, which cannot be answered early; use hard_timeout "
                "and stale_if_error"
            )

        def decorate(func: Callable[P, R]) -> SyncCachedFunction[P, R]:
            @functools.wraps(func)
            async def on_loop(*args: Any, **kwargs: Any) -> Any:
                handoff = _HANDOFF.get()
                if handoff is None or handoff.task is not asyncio.current_task():
                    # Not the caller's own load (an early refresh, a soft timeout's
                    # background load): nobody waits to run it, a worker thread does.
                    return await asyncio.to_thread(func, *args, **kwargs)
                reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                handoff.request.set_result(reply)
                return await reply

            async_cached = self._cache.cached(ttl, tags, key, **options)(on_loop)
            return SyncCachedFunction(self._cache, func, async_cached)

        return decorate


class SyncCachedFunction(Generic[P, R]):
    """What `@cache.sync.cached` returns: the function, plus `.key()` and `.invalidate()`."""

    def __init__(
        self, cache: AsyncCache, func: Callable[P, R], async_cached: CachedFunction[..., Any]
    ) -> None:
        self._cache = cache
        self._func = func
        self._async = async_cached
        self.__wrapped__ = func
        functools.update_wrapper(self, func)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        handoff = _Handoff()

        async def call() -> Any:
            handoff.task = asyncio.current_task()
            _HANDOFF.set(handoff)  # this task's context only
            return await self._async(*args, **kwargs)

        done, loop = self._cache.sync.submit(call)
        wait([done, handoff.request], first=True)
        if not done.done():  # the load path asks for the value: compute it here
            reply = handoff.request.result()
            try:
                value = self._func(*args, **kwargs)
            except Exception as exc:
                if not _hand_back(loop, _settle, reply, None, exc):
                    raise  # the cache closed meanwhile: the function's own error
            except BaseException:
                # SystemExit, KeyboardInterrupt: this thread's business. Handed
                # to the loop they would end its thread; the load is cancelled.
                _hand_back(loop, reply.cancel)
                raise
            else:
                if not _hand_back(loop, _settle, reply, value, None):
                    return value  # the cache closed meanwhile: the answer stands, uncached
                wait([done])
                try:
                    return done.result()  # type: ignore[no-any-return]
                except CacheClosedError:
                    return value  # closed while the function ran (`settle_calls`): the same
        wait([done])
        return done.result()  # type: ignore[no-any-return]

    def key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        return self._async.key(*args, **kwargs)

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> None:
        key = self._async.key(*args, **kwargs)
        self._cache.sync.run(lambda: self._cache.delete(key))

    def __repr__(self) -> str:
        return f"<sync {self._async!r}>"


def _hand_back(
    loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: Any
) -> bool:
    """Schedule *callback* on the cache's loop; False if that loop has closed."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        return False
    return True


def _settle(future: asyncio.Future[Any], value: Any, exc: Exception | None) -> None:
    if not future.done():  # a hard timeout may have given up on it already
        if exc is None:
            future.set_result(value)
        else:
            future.set_exception(exc)
