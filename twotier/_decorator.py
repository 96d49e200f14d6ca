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
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Generic, Literal, ParamSpec, Protocol, TypeVar

from ._events import Events
from ._exceptions import ConfigurationError
from ._keys import MAX_KEY_LENGTH, SCALARS, KeyPlan, hash_long_key
from ._policies import Loader, LoaderPolicy, PolicyRunner
from ._stats import Counters
from ._types import MISS, Clock, Missing, RenderTags

P = ParamSpec("P")
R = TypeVar("R")

#: Where `lookup` found a call's entry; None when it is in neither tier.
Tier = Literal["L1", "L2"]
#: `unless=`: a predicate on a result; true means "return it, but do not cache it".
Unless = Callable[[Any], object]


class Peek(Protocol):
    """The L1 reads of the hit path: never Redis, never a loader."""

    def get(self, key: str) -> Any: ...

    def get_with_expiry(self, key: str) -> tuple[Any, float]: ...


class LoadingCache(Protocol):
    """What a decorated function needs from its cache (`TwoTierCache` is one).

    The decorator is typed against this, not the cache class, so that it never
    imports `_cache` (DESIGN §3: no import circle).
    """

    @property
    def local(self) -> Peek: ...

    @property
    def counters(self) -> Counters: ...

    @property
    def events(self) -> Events: ...

    @property
    def clock(self) -> Clock: ...

    def policy_runner(self, policy: LoaderPolicy) -> PolicyRunner | None: ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> object: ...

    async def get(self, key: str, default: Any = None) -> Any: ...

    async def delete(self, key: str) -> None: ...

    async def load(
        self, key: str, tags: RenderTags, ttl: float, loader: Loader, copy_on_read: bool
    ) -> Any: ...

    async def refresh(
        self,
        key: str,
        tags: tuple[str, ...],
        ttl: float,
        loader: Loader,
        copy_on_read: bool,
        replaces_until: float,
    ) -> None: ...


class _Uncacheable(BaseException):
    """Carries a result that `unless=` refused out of the load path.

    Raised by the loader, so the cache stores nothing (the fill lease is
    released, L1 untouched, callers that joined the load get the same result),
    and caught by the decorator, which returns the result. A BaseException, not
    an Exception: it is not a load error (not counted in `load_errors`, and
    `stale_if_error` must not answer it with an older value).
    """

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value


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

    async def lookup(self, *args: P.args, **kwargs: P.kwargs) -> tuple[R | Missing, Tier | None]:
        """This call's cached value and the tier that held it, never running the
        function: `(MISS, None)` when neither L1 nor Redis holds it."""
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
        "_one",
        "_plan",
        "_runner",
        "_ttl",
        "_unless",
    )

    def __init__(
        self,
        cache: LoadingCache,
        func: Callable[P, Awaitable[R]],
        plan: KeyPlan,
        ttl: float,
        copy_on_read: bool,
        policy: LoaderPolicy,
        unless: Unless | None = None,
    ) -> None:
        self.__wrapped__ = func
        self._unless = unless
        self._cache = cache
        self._plan = plan
        self._one = plan.one_argument_prefix
        self._ttl = ttl
        self._copy = copy_on_read
        self._get = cache.local.get  # bound once: the hit path's only lookup
        self._counters = cache.counters
        self._events = cache.events
        self._runner = cache.policy_runner(policy)
        functools.update_wrapper(self, func)

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        one = self._one
        if one is not None and len(args) == 1 and not kwargs and type(args[0]) in SCALARS:
            key = one + repr(args[0]) + ")"  # `KeyPlan.key`'s commonest shape, inlined
            if len(key) > MAX_KEY_LENGTH:
                key = hash_long_key(key)
        else:
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
        plan = self._plan

        def tags() -> tuple[str, ...]:  # only if L2 misses too
            return plan.tags(args, kwargs)

        cache, copy = self._cache, self._copy
        loader = self._loader(args, kwargs)
        try:
            if self._runner is None:
                return await cache.load(key, tags, self._ttl, loader, copy)  # type: ignore[no-any-return]
            return await self._runner.run(  # type: ignore[no-any-return]
                key, self._ttl, loader, lambda ttl, loader: cache.load(key, tags, ttl, loader, copy)
            )
        except _Uncacheable as refused:
            return refused.value  # type: ignore[no-any-return]  # this function's result

    def _loader(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Loader:
        func, unless = self.__wrapped__, self._unless
        if unless is None:
            return lambda: func(*args, **kwargs)

        async def load() -> Any:
            value = await func(*args, **kwargs)
            if unless(value):
                raise _Uncacheable(value)
            return value

        return load

    def key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        return self._plan.key(args, kwargs)

    async def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> None:
        await self._cache.delete(self._plan.key(args, kwargs))

    async def lookup(self, *args: P.args, **kwargs: P.kwargs) -> tuple[R | Missing, Tier | None]:
        key = self._plan.key(args, kwargs)
        value = self._get(key)
        if value is not MISS:
            self._counters.l1_hits += 1
            return value, "L1"
        # `get` reads Redis without a lease and keeps a valid entry in L1.
        value = await self._cache.get(key, MISS)
        return (MISS, None) if value is MISS else (value, "L2")

    def describe(self) -> dict[str, Any]:
        """What the strategy page shows of this function (`twotier.strategy`)."""
        plan = self._plan
        return {
            "function": plan.name,
            "key": plan.key_spec,
            "ignored": sorted(plan.ignored),
            "ttl": self._ttl,
            "tags": list(plan.tag_templates),
            "unless": self._unless is not None,
        }

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
        except _Uncacheable:
            # The current result is one `unless=` refuses (the row is gone, the
            # list is empty): the value still cached is outdated, so drop it.
            await self._cache.delete(key)
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
    cache: LoadingCache,
    ttl: float,
    tags: list[str] | str,
    key: str | Callable[..., str] | None,
    copy_on_read: bool,
    policy: LoaderPolicy,
    ignore: Iterable[str] = (),
    unless: Unless | None = None,
) -> Callable[[Callable[P, Awaitable[R]]], CachedFunction[P, R]]:
    if unless is not None and not callable(unless):
        raise ConfigurationError(f"unless= must be a predicate on the result, got {unless!r}")

    def decorate(func: Callable[P, Awaitable[R]]) -> CachedFunction[P, R]:
        if not inspect.iscoroutinefunction(func):
            raise ConfigurationError(
                f"@cached needs an async function; {getattr(func, '__qualname__', func)!r} "
                "is not (wrap sync code with anyio.to_thread.run_sync)"
            )
        plan = KeyPlan(func, key, tags, ignore)
        cached: CachedFunction[P, R]
        if policy.early_refresh:
            cached = _EarlyRefreshing(
                cache, func, plan, ttl, copy_on_read, policy, unless, beta=policy.early_refresh
            )
        else:
            cached = _Cached(cache, func, plan, ttl, copy_on_read, policy, unless)
        return cached

    return decorate
