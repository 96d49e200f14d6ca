"""Eviction hints (`_hints.py`, issue 21, item 2) without a server: the hold
a hint puts on keys, tags or everything, how it ends, and the message that
carries it. What a hint does between instances during a slow slot migration
is in integration/test_cluster_ops.py."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from tests.contract import eventually
from tests.test_mutants_shared import Remote
from twotier import TwoTierCache
from twotier._hints import Holds
from twotier._mirror import VersionMirror
from twotier._outbox import Outbox
from twotier._stats import Counters
from twotier._tier import Message
from twotier.testing import FakeClock


def _holds(hold: float = 2.0) -> tuple[Holds, FakeClock]:
    clock = FakeClock()
    return Holds(clock, hold), clock


def test_nothing_is_held_before_a_hint() -> None:
    holds, _ = _holds()
    assert not holds.holds("k", ("t",))


def test_a_key_hint_holds_that_key_only() -> None:
    holds, _ = _holds()
    holds.hold("k", ("a", "b"))
    assert holds.holds("a", ())
    assert holds.holds("b", ("t",))
    assert not holds.holds("c", ("a",))  # a key's name is not a tag


def test_a_tag_hint_holds_every_entry_carrying_the_tag() -> None:
    holds, _ = _holds()
    holds.hold("t", ("t1",))
    assert holds.holds("any", ("t0", "t1"))
    assert not holds.holds("t1", ("t0",))  # a tag's name is not a key


def test_a_clear_hint_holds_everything() -> None:
    holds, _ = _holds()
    holds.hold("c", ())
    assert holds.holds("any", ())


@pytest.mark.parametrize(("subject", "names"), [("k", ("a",)), ("t", ("a",)), ("c", ())])
def test_a_hold_ends_when_its_numbered_change_arrives(subject: str, names: tuple[str, ...]) -> None:
    """The numbered change landed in Redis: its entries are judged by their
    versions again (or are gone)."""
    holds, _ = _holds()
    holds.hold(subject, names)
    holds.release(subject, names)
    assert not holds.holds("a", ("a",))


def test_a_change_of_other_names_releases_nothing() -> None:
    holds, _ = _holds()
    holds.hold("k", ("a",))
    holds.hold("t", ("t",))
    holds.release("k", ("b",))
    holds.release("t", ("u",))
    holds.release("x", ("t",))  # versions compacted away change no entry
    assert holds.holds("a", ())
    assert holds.holds("b", ("t",))


@pytest.mark.parametrize(("subject", "names"), [("k", ("a",)), ("t", ("a",)), ("c", ())])
def test_a_hold_ends_by_itself_after_its_time(subject: str, names: tuple[str, ...]) -> None:
    """A writer that died with its change queued hints no more: the hold ends,
    and no entry is kept from being served for longer than that."""
    holds, clock = _holds(hold=2.0)
    holds.hold(subject, names)
    clock.advance(1.9)
    assert holds.holds("a", ("a",))
    clock.advance(0.2)
    assert not holds.holds("a", ("a",))


def test_a_hint_again_renews_the_hold() -> None:
    """The writer hints again at every refused retry: a long migration stays held."""
    holds, clock = _holds(hold=2.0)
    holds.hold("t", ("t",))
    clock.advance(1.5)
    holds.hold("t", ("t",))
    clock.advance(1.5)
    assert holds.holds("k", ("t",))


@pytest.mark.parametrize(("subject", "names"), [("k", ("a", "b")), ("t", ("news",)), ("c", ())])
def test_a_hint_message_reads_back_as_it_was_sent(subject: str, names: tuple[str, ...]) -> None:
    sent = Message("h", names, "origin", 0, (subject,), 12.5)
    assert Message.decode(sent.encode()) == sent


@pytest.mark.parametrize(
    "body",
    [pytest.param("", id="no-subject"), pytest.param("x\x1fa", id="unknown-subject")],
)
def test_a_hint_that_does_not_say_what_is_on_its_way_is_refused(body: str) -> None:
    fields = ["2", "h", "0", "origin", "0", *([body] if body else [])]
    with pytest.raises(ValueError, match="keys, tags or a clear"):
        Message.decode("\x1f".join(fields))


def test_the_outbox_hints_what_it_holds() -> None:
    outbox = Outbox(100, Counters())
    assert outbox.hints() == []
    outbox.add_keys(("a", "b"))
    assert outbox.hints() == [("k", ("a", "b"))]
    outbox.add_tags(("t",))
    assert outbox.hints() == [("k", ("a", "b")), ("t", ("t",))]
    outbox.add_clear()  # a clear covers every key and tag
    assert outbox.hints() == [("c", ())]


def test_the_outbox_takes_a_change_by_its_kind() -> None:
    outbox = Outbox(100, Counters())
    outbox.add("k", ("a",))
    outbox.add("t", ("t",))
    assert outbox.hints() == [("k", ("a",)), ("t", ("t",))]
    outbox.add("c", ())
    assert outbox.hints() == [("c", ())]


@pytest.fixture
async def refusing() -> AsyncIterator[tuple[TwoTierCache, Remote]]:
    """A started cache whose shared tier refuses the calls named in `remote.fail`."""
    remote = Remote()
    async with TwoTierCache(namespace=f"h{uuid.uuid4().hex[:8]}") as cache:
        cache._use_remote(remote, VersionMirror(remote.versions))  # type: ignore[arg-type]
        yield cache, remote


async def test_each_refused_change_is_hinted_alone_and_a_refused_retry_hints_the_queue(
    refusing: tuple[TwoTierCache, Remote],
) -> None:
    """A refused change is hinted at once, itself only: a burst of refused
    changes during a slow migration is one small hint each, not the whole
    queue again each time. A retry that is refused again hints everything
    still queued (the others' holds are renewed)."""
    cache, remote = refusing
    remote.fail.add("delete")

    def hints() -> list[tuple[object, ...]]:
        return [call[1:] for call in remote.calls if call[0] == "hint"]

    async def hinted(hint: tuple[object, ...]) -> bool:
        return hint in hints()

    await cache.delete("a")
    await eventually(lambda: hinted(("k", ("a",))))
    await cache.delete("b")
    await eventually(lambda: hinted(("k", ("a", "b"))))  # a refused retry: the whole queue
    assert hints()[0] == ("k", ("a",))
    assert ("k", ("b",)) in hints()  # the second change alone


class _CountingClock(FakeClock):
    """A fake clock that counts its reads: what a hold check costs."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return super().__call__()


def test_with_nothing_held_a_check_costs_no_clock_read() -> None:
    """Every L2 hit asks whether its entry is held: with nothing on its way
    (nearly always) the answer must not cost even a clock read, and a hold
    that expired is forgotten by the check that finds it so.
    Kills: hints-25fabf, hints-d8603f (no fast path), hints-881353 (an
    expired hold kept: every later check pays)."""
    clock = _CountingClock()
    holds = Holds(clock, 2.0)
    assert holds.holds("k", ("t",)) is False
    assert clock.reads == 0
    holds.hold("k", ("k",))
    clock.advance(3.0)
    assert holds.holds("k", ()) is False  # expired: forgotten
    reads = clock.reads
    assert holds.holds("k", ("t",)) is False
    assert clock.reads == reads


@pytest.mark.parametrize(("subject", "names"), [("k", ("a",)), ("t", ("a",)), ("c", ())])
def test_a_hold_ends_exactly_at_its_time(subject: str, names: tuple[str, ...]) -> None:
    """Kills: hints-c96f28, hints-e02108 (a hold still on at its end)."""
    holds, clock = _holds(hold=2.0)
    holds.hold(subject, names)
    clock.advance(2.0)
    assert holds.holds("a", ("a",)) is False


async def test_a_round_of_hints_stops_at_the_first_one_refused(
    refusing: tuple[TwoTierCache, Remote],
) -> None:
    """Hints are best effort: a server that refused one will refuse the next,
    so the rest of the round is not sent (the next retry hints again).
    Kills: changes-530d28 (every hint of the round tried)."""
    cache, remote = refusing
    remote.fail.add("hint")
    await cache._changes._hint([("k", ("a",)), ("t", ("t",))])
    assert remote.count("hint") == 1
