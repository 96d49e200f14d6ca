"""A loop thread for callers that have no event loop of their own.

anyio's blocking portal, reduced to what the cache needs: one daemon thread
running one event loop, started on first use; callers hand it coroutines
thread-safely and block for the result. Starlette's `TestClient` drives an
async app from sync code the same way. `asyncio.run()` per call would create a
new loop each time, and the cache's connections belong to the loop that made
them (issue 11: "Event loop is closed" on the second request).

Under gevent's monkey-patching (`gunicorn -k gevent`, `monkey.patch_all()`)
`threading.Thread` starts a greenlet, not a thread: an event loop run there
would be a loop of the caller's own OS thread, so every blocking call would
wait on itself (issue 18, item 3). The loop then runs in a real OS thread,
started through gevent's originals, on the original selector, with an
executor of real threads for what the loop hands to threads (`to_thread`,
name resolution). Callers still block cooperatively: their waits go through
the patched `threading` primitives, so other greenlets run meanwhile.
"""

from __future__ import annotations

import _thread
import asyncio
import concurrent.futures
import contextlib
import importlib
import selectors
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

T = TypeVar("T")
P = ParamSpec("P")


def _gevent_monkey() -> Any | None:
    """gevent's `monkey` module, if it has patched `threading` in this process."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        return monkey
    return None


def native_lock() -> Any:
    """A lock of the OS, also under gevent's monkey-patching (for state that a
    caller and the loop's thread share)."""
    monkey = _gevent_monkey()
    if monkey is None:
        return _thread.allocate_lock()
    return monkey.get_original("_thread", "allocate_lock")()


class _Thread:
    """The loop's thread: a daemon `threading.Thread`, or under gevent a real
    OS thread (see the module's docstring)."""

    def __init__(self, name: str, target: Callable[[], None]) -> None:
        self._done = native_lock()
        self._done.acquire()
        monkey = _gevent_monkey()
        if monkey is None:
            self._get_ident: Callable[[], int] = threading.get_ident
            thread = threading.Thread(target=self._run, args=(target,), name=name, daemon=True)
            thread.start()
            self.ident = thread.ident
        else:
            self._get_ident = monkey.get_original("_thread", "get_ident")
            self.ident = monkey.get_original("_thread", "start_new_thread")(self._run, (target,))

    def _run(self, target: Callable[[], None]) -> None:
        try:
            target()
        finally:
            self._done.release()

    def is_current(self) -> bool:
        return self._get_ident() == self.ident

    def join(self, timeout: float) -> bool:
        """Whether the thread has ended within *timeout* seconds."""
        if self._done.acquire(timeout=timeout):
            self._done.release()
            return True
        return False


class _NativeExecutor(concurrent.futures.ThreadPoolExecutor):
    """Runs each call in a real OS thread of its own, for a loop under gevent:
    the pool's own threads would be greenlets of a hub that never runs in the
    loop's thread. (A `ThreadPoolExecutor` by type only: asyncio takes no
    other as a loop's default executor.)"""

    def __init__(self, start_new_thread: Callable[..., int]) -> None:
        super().__init__(max_workers=1)  # (never starts a thread of its own)
        self._start = start_new_thread

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)

        self._start(run, ())
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass  # its threads end with their calls


def new_future() -> concurrent.futures.Future[Any]:
    """A future that the loop's thread completes and a caller waits on. Under
    gevent its lock is one of the OS: a patched lock taken by the loop's thread
    would need a gevent hub running there."""
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    monkey = _gevent_monkey()
    if monkey is not None:
        rlock = monkey.get_original("threading", "RLock")
        # (a private attribute, set before anyone else holds the future)
        future._condition = monkey.get_original("threading", "Condition")(rlock())
    return future


def submit(coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop) -> Any:
    """`asyncio.run_coroutine_threadsafe`; under gevent, onto a `new_future`."""
    if _gevent_monkey() is None:
        return asyncio.run_coroutine_threadsafe(coro, loop)
    future = new_future()

    def start() -> None:
        task = loop.create_task(coro)
        task.add_done_callback(settle)

    def settle(task: asyncio.Task[T]) -> None:
        with contextlib.suppress(concurrent.futures.InvalidStateError, RuntimeError):
            if task.cancelled():
                future.cancel()
            elif future.set_running_or_notify_cancel():  # (False: abandoned meanwhile)
                exc = task.exception()
                if exc is None:
                    future.set_result(task.result())
                else:
                    future.set_exception(exc)

    loop.call_soon_threadsafe(start)
    return future


def wait(futures: list[concurrent.futures.Future[Any]], *, first: bool = False) -> None:
    """Block until one of *futures* (*first*) or all of them are done.

    Under gevent the caller is a greenlet, and other greenlets must run while
    it waits for the loop's thread: the wait is on a gevent event, set through
    an `async_` watcher of the caller's hub, the one way another OS thread may
    wake a gevent hub (a patched lock released there would not, and with no
    other greenlet to run the hub would stop, "would block forever").
    """
    monkey = _gevent_monkey()
    if monkey is None:
        concurrent.futures.wait(
            futures, return_when="FIRST_COMPLETED" if first else "ALL_COMPLETED"
        )
        return

    def ready() -> bool:
        done = [future.done() for future in futures]
        return any(done) if first else all(done)

    if ready():
        return
    hub = importlib.import_module("gevent.hub").get_hub()  # (gevent patched this process)
    watcher = hub.loop.async_()
    woken = importlib.import_module("gevent.event").Event()
    guard = native_lock()
    open_ = [True]

    def wake(_: object) -> None:  # in the loop's thread, or here
        with guard:
            if open_[0]:
                watcher.send()

    watcher.start(woken.set)
    try:
        for future in futures:
            future.add_done_callback(wake)
        while not ready():
            woken.wait()
            woken.clear()
    finally:
        with guard:
            open_[0] = False
            watcher.stop()
            watcher.close()


def _new_loop() -> asyncio.AbstractEventLoop:
    monkey = _gevent_monkey()
    if monkey is None:
        return asyncio.new_event_loop()
    selector: type[selectors.BaseSelector] = monkey.get_original("selectors", "DefaultSelector")
    loop = asyncio.SelectorEventLoop(selector())
    loop.set_default_executor(_NativeExecutor(monkey.get_original("_thread", "start_new_thread")))
    return loop


class LoopThread:
    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: _Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run *coro* on the loop thread and wait for its result (or exception)."""
        future = submit(coro, self.started())
        wait([future])
        return future.result()  # type: ignore[no-any-return]

    def started(self) -> asyncio.AbstractEventLoop:
        """The running loop of the thread, started if need be."""
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = _new_loop()
                ready = native_lock()
                ready.acquire()
                thread = _Thread(self._name, lambda: self._serve(loop, ready.release))
                ready.acquire()  # released by the loop's first callback
                self._loop, self._thread = loop, thread
            return self._loop

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop, ready: Callable[[], object]) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def stop(self) -> bool:
        """End the loop thread (after the work handed to it so far). True if
        this call ended it; False if it runs on (a blocked loop, or a call from
        the thread itself) or another call stopped it."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return False
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                loop.call_soon_threadsafe(loop.stop)
        if thread.is_current():
            return False  # it ends when this callback returns
        return thread.join(timeout=5)
