"""twotier's logging fits the application's configuration (uvicorn's, Django's):
no handler of its own, records under the "twotier" logger carrying `instance` and `tier`."""

from __future__ import annotations

import logging
import logging.config
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import redis.exceptions as redis_errors

from twotier import TwoTierCache
from twotier._events import BaseObserver
from twotier._guard import describe
from twotier._logging import tier_log


class ListHandler(logging.Handler):
    """Keeps formatted records, as a test stand-in for uvicorn's stream handler."""

    records: ClassVar[list[tuple[logging.LogRecord, str]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record, self.format(record)))


class Failing(BaseObserver):
    def loaded(self, seconds: float, ok: bool) -> None:
        raise RuntimeError("observer bug")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    logger = logging.getLogger("twotier")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    # dictConfig with disable_existing_loggers=True disables every other logger
    disabled = {
        name: existing.disabled
        for name, existing in logging.root.manager.loggerDict.items()
        if isinstance(existing, logging.Logger)
    }
    ListHandler.records.clear()
    yield
    logger.handlers[:], logger.level, logger.propagate = saved
    for name, was in disabled.items():
        logging.getLogger(name).disabled = was


def _uvicorn_style(disable_existing: bool) -> dict[str, Any]:
    """uvicorn's LOGGING_CONFIG shape, with the application's "twotier" entry added."""
    return {
        "version": 1,
        "disable_existing_loggers": disable_existing,
        "formatters": {
            "default": {"format": "%(levelname)s %(name)s %(message)s"},
            "twotier": {"format": "%(levelname)s [%(instance)s/%(tier)s] %(message)s"},
        },
        "handlers": {
            "default": {"class": "logging.StreamHandler", "formatter": "default"},
            "twotier": {"()": ListHandler, "formatter": "twotier"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "twotier": {"handlers": ["twotier"], "level": "INFO", "propagate": False},
        },
    }


def test_the_library_installs_no_handler() -> None:
    logger = logging.getLogger("twotier")
    assert all(isinstance(h, logging.NullHandler) for h in logger.handlers)
    assert logger.propagate


async def _log_one_warning() -> TwoTierCache:
    async with TwoTierCache(namespace=f"lg{uuid.uuid4().hex[:8]}", observers=[Failing()]) as cache:

        @cache.cached(ttl=60)
        async def f() -> int:
            return 1

        await f()  # the failing observer makes the cache log one warning (tier "cache")
    return cache


@pytest.mark.parametrize("disable_existing", [False, True], ids=["uvicorn", "django-strict"])
async def test_records_reach_a_dictconfig_handler_with_instance_and_tier(
    disable_existing: bool,
) -> None:
    # Django's LOGGING often sets disable_existing_loggers=True, which disables
    # every logger created before it and not named in it: "twotier" is named.
    logging.config.dictConfig(_uvicorn_style(disable_existing))
    cache = await _log_one_warning()
    assert ListHandler.records, "no twotier record reached the configured handler"
    record, text = ListHandler.records[0]
    assert record.name == "twotier"
    assert record.instance == cache.instance_id  # type: ignore[attr-defined]
    assert record.tier == "cache"  # type: ignore[attr-defined]
    assert text.startswith(f"WARNING [{cache.instance_id}/cache] observer")


async def test_records_propagate_to_the_root_handlers(caplog: pytest.LogCaptureFixture) -> None:
    # Django's default: twotier not named, records propagate to the root's handlers.
    caplog.set_level(logging.WARNING)
    cache = await _log_one_warning()
    (record,) = [r for r in caplog.records if r.name == "twotier"]
    assert (record.instance, record.tier) == (cache.instance_id, "cache")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "exc",
    [
        TimeoutError(),  # asyncio.timeout's: the listener's subscription deadline
        redis_errors.TimeoutError(),
        redis_errors.ConnectionError(),
        ConnectionResetError(),
        OSError(),
        RuntimeError(" "),
    ],
    ids=repr,
)
def test_a_cause_is_never_empty(exc: BaseException) -> None:
    """Issue 18, item 7: "Redis did not answer in time: " ended a log line,
    the `str()` of a bare `TimeoutError()` being empty."""
    for tls in (None, True, False):
        cause = describe(exc, tls=tls)
        assert cause.strip() == cause
        assert not cause.endswith(":"), cause
        assert len(cause) > len(type(exc).__name__) or cause == type(exc).__name__


def test_a_bare_timeout_says_what_happened() -> None:
    assert describe(TimeoutError()) == (
        "Redis did not answer in time: no reply before the client's deadline"
    )
    # A timeout that says something is quoted as before.
    assert describe(redis_errors.TimeoutError("Timeout reading from socket")) == (
        "Redis did not answer in time: Timeout reading from socket"
    )


def test_records_carry_the_process_id(caplog: pytest.LogCaptureFixture) -> None:
    """`%(process)d` is logging's own attribute; with `%(instance)s` a line says
    which worker of a pre-fork server spoke (docs/deployment.md)."""
    caplog.set_level(logging.INFO)
    tier_log("abc123", "cache").info("hello")
    (record,) = [r for r in caplog.records if r.name == "twotier"]
    assert (record.process, record.instance) == (os.getpid(), "abc123")  # type: ignore[attr-defined]


def test_without_configuration_nothing_is_printed() -> None:
    """The library convention: a `NullHandler` on the library's logger, so an
    application that configured no logging gets no bare last-resort lines on
    stderr (without level, time, pid or instance); one that did gets records
    with all of them."""
    code = (
        "import logging\n"
        "from twotier._logging import tier_log\n"
        "tier_log('abc123', 'cache').warning('Redis unavailable')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stderr == ""
