"""`@cache.cached`: the typed decorator and its hit path.

The key plan and tag templates are compiled at decoration time, so an unknown
template field fails at import of the user's module, and an L1 hit costs one
key build, one dict lookup and one expiry check: no task, no lock, no timeout
object, no formatting of tags, no serialization of an immutable result.
"""

from __future__ import annotations

import functools
import inspect
import math
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar

from ._exceptions import ConfigurationError
from ._keys import KeyPlan
from ._policies import Loader, LoaderPolicy
from ._types import MISS

if TYPE_CHECKING:
    from ._cache import TwoTierCache

P = ParamSpec("P")
R = TypeVar("R")


class CachedFunction(Protocol[P, R]):
    """What `@cache.cached` returns: the function, plus `.key()` and `.invalidate()`."""

    __wrapped__: Callable[P, Awaitable[R]]

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...

    def key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The cache key this call would use."""
        ...

    async def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Delete this call's entry on every instance."""
        ...


class _Cached(Generic[P, R]):
    __slots__ = (
        "__dict__",
        "__wrapped__",
        "_cache",
        "_copy",
        "_counters",
        "_events",
        "_get",
        "_plan",
        "_runner",
        "_ttl",
    )

    def __init__(
        self,
        cache: TwoTierCache,
        func: Callable[P, Awaitable[R]],
        plan: KeyPlan,
        ttl: float,
        copy_on_read: bool,
        policy: LoaderPolicy,
    ) -> None:
        self.__wrapped__ = func
        self._cache = cache
        self._plan = plan
        self._ttl = ttl
        self._copy = copy_on_read
        self._get = cache.local.get  # bound once: the hit path's only lookup
        self._counters = cache.counters
        self._events = cache.events
        self._runner = cache.policy_runner(policy)
        functools.update_wrapper(self, func)

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        key = self._plan.key(args, kwargs)
        if self._events.tracing:  # the hit path's only cost of being observable
            return await self._traced(key, args, kwargs)
        value = self._get(key)
        if value is not MISS:
            self._counters.l1_hits += 1
            return value  # type: ignore[no-any-return]  # stored by this function
        return await self._miss(key, args, kwargs)

    async def _lookup(self, key: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        """`__call__` after the key, for the traced path (kept apart so the
        untraced hit path stays one frame)."""
        value = self._get(key)
        if value is not MISS:
            self._counters.l1_hits += 1
            return value  # type: ignore[no-any-return]  # stored by this function
        return await self._miss(key, args, kwargs)

    async def _traced(self, key: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        tags = self._plan.tags(args, kwargs)
        call = self._lookup(key, args, kwargs)
        return await self._events.read("cached", key, tags, call, self._plan.name)

    async def _miss(self, key: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        self._events.l1_missed()
        tags = self._plan.tags(args, kwargs)
        cache, copy = self._cache, self._copy
        loader = self._loader(args, kwargs)
        if self._runner is None:
            return await cache.load(key, tags, self._ttl, loader, copy)  # type: ignore[no-any-return]
        return await self._runner.run(  # type: ignore[no-any-return]
            key, self._ttl, loader, lambda ttl, loader: cache.load(key, tags, ttl, loader, copy)
        )

    def _loader(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Loader:
        func = self.__wrapped__
        return lambda: func(*args, **kwargs)

    def key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        return self._plan.key(args, kwargs)

    async def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> None:
        await self._cache.delete(self._plan.key(args, kwargs))

    def __repr__(self) -> str:
        return f"<cached {self._plan.name} ttl={self._ttl:g}s>"


class _EarlyRefreshing(_Cached[P, R]):
    """`@cached(early_refresh=beta)`: probabilistic early recomputation, XFetch
    (Vattani, Chierichetti, Lowenstein: "Optimal Probabilistic Cache Stampede
    Prevention", VLDB 2015).

    On an L1 hit, the entry is refreshed in the background when
    ``now - delta * beta * ln(random()) >= expiry``, where delta is how long the
    loader takes (a moving average of this function's loads). Hot keys are thus
    reloaded shortly before they expire, one caller at a time, and callers never
    wait for it. beta = 1 is the paper's optimum; larger refreshes earlier.
    """

    __slots__ = ("_beta", "_clock", "_delta", "_peek", "_refreshing")

    def __init__(self, *args: Any, beta: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._beta = beta
        self._delta = 0.0
        self._clock = self._cache.clock
        self._peek = self._cache.local.get_with_expiry
        self._refreshing: set[str] = set()

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        key = self._plan.key(args, kwargs)
        if self._events.tracing:
            return await self._traced(key, args, kwargs)
        return await self._lookup(key, args, kwargs)

    async def _lookup(self, key: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        value, expires = self._peek(key)
        if value is MISS:
            return await self._miss(key, args, kwargs)
        self._counters.l1_hits += 1
        gap = -self._delta * self._beta * math.log(1.0 - random.random())  # noqa: S311
        if self._clock() + gap >= expires and key not in self._refreshing:
            self._refreshing.add(key)
            self._cache.spawn(self._refresh(key, expires, args, kwargs))
        return value  # type: ignore[no-any-return]  # stored by this function

    async def _refresh(
        self, key: str, expires: float, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        loader, ttl = self._loader(args, kwargs), self._ttl
        if self._runner is not None:  # hard timeout and jitter apply to refreshes too
            loader, ttl = self._runner.wrap(loader), self._runner.ttl(ttl)
        try:
            tags = self._plan.tags(args, kwargs)
            await self._cache.refresh(key, tags, ttl, loader, self._copy, expires)
        finally:
            self._refreshing.discard(key)

    def _loader(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Loader:
        """The loader, timed: delta is how long the loader itself takes (no Redis)."""
        load = super()._loader(args, kwargs)

        async def timed() -> Any:
            start = self._clock()
            try:
                return await load()
            finally:
                # An exponential moving average: recent loads count most.
                took = self._clock() - start
                self._delta = took if not self._delta else 0.8 * self._delta + 0.2 * took

        return timed


def make_cached(
    cache: TwoTierCache,
    ttl: float,
    tags: list[str] | str,
    key: str | Callable[..., str] | None,
    copy_on_read: bool,
    policy: LoaderPolicy,
) -> Callable[[Callable[P, Awaitable[R]]], CachedFunction[P, R]]:
    def decorate(func: Callable[P, Awaitable[R]]) -> CachedFunction[P, R]:
        if not inspect.iscoroutinefunction(func):
            raise ConfigurationError(
                f"@cached needs an async function; {getattr(func, '__qualname__', func)!r} "
                "is not (wrap sync code with anyio.to_thread.run_sync)"
            )
        plan = KeyPlan(func, key, tags)
        cached: CachedFunction[P, R]
        if policy.early_refresh:
            cached = _EarlyRefreshing(
                cache, func, plan, ttl, copy_on_read, policy, beta=policy.early_refresh
            )
        else:
            cached = _Cached(cache, func, plan, ttl, copy_on_read, policy)
        return cached

    return decorate
