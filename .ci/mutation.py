#!/usr/bin/env python3
"""Mutation testing of twotier's core modules: does the suite notice a bug?

    python .ci/mutation.py                      # every core module, 2 jobs
    python .ci/mutation.py --module outbox      # one module (repeatable)
    python .ci/mutation.py --list               # the mutants and their ids, nothing run
    python .ci/mutation.py --rerun report.json  # only the survivors of an earlier report

For each job the repository at --rev (default HEAD) is extracted into a
temporary directory (`git archive`; --working-tree copies the files as they
are now, uncommitted ones included); the working tree is never touched, and
the copies are removed at the end. One mutation at a time is written into a
copy, the module's own test selection runs there (`python -m pytest -x -q
-p no:cacheprovider --timeout 60 ...`, from the copy's root with
PYTHONPATH=<copy>, so the copy's `twotier` is imported and not the editable
install: checked before anything runs), and the file is restored. A mutant is
*killed* when the run fails (a test, the collection, or the time limit), and
*survives* when every test passes. Tests that fail on the unmutated copy are
left out of the mutant runs, and reported.

Mutants come from simple operators (see `python_mutants` and `lua_mutants`)
and a hand-written list of semantic ones (`HAND`). Mutants that cannot change
any behaviour are listed in `EQUIVALENT`, each with its reason, and are not
counted: the score is killed / (killed + survived).

Development aids: --include copies a working-tree file (a new test) over the
commit's, --exclude leaves one out (to measure what a test file adds), --tests
replaces the module's selection, --match picks mutants by id, file:line or
description. Standard library only.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
R = TypeVar("R")

# --- what is mutated, and which tests are run for it ------------------------------------------

#: Test files (or file::test) per module, in the order they run (fast and most telling
#: first; with -x the first failure ends the run). Those missing from the copy are skipped.
MODULES: dict[str, dict[str, list[str]]] = {
    "outbox": {
        "files": ["twotier/_outbox.py"],
        "tests": [
            "tests/test_mutation_kills.py",
            "integration/test_outbox.py",
            "integration/test_faults.py",
            "integration/test_stale.py",
            "integration/test_mutation_kills.py",
        ],
    },
    "guard": {
        "files": ["twotier/_guard.py"],
        "tests": [
            "tests/test_guard.py",
            "tests/test_mutation_kills.py",
            "integration/test_hangs.py",
            "integration/test_faults.py",
            "integration/test_coherence.py",
            "integration/test_stale.py",
            "integration/test_mutation_kills.py",
            "integration/test_resources.py::test_wrong_password_is_named",
            "integration/test_resources.py::test_acl_denial_is_named",
            "integration/test_resources.py::test_tls_certificate_failure_is_named",
            "integration/test_resources.py::test_tls_mismatch_is_named",
        ],
    },
    "flights": {
        "files": ["twotier/_flights.py"],
        "tests": [
            "tests/test_flights.py",
            "tests/test_contract_memory.py",
            "tests/test_memory_cache.py",
            "tests/test_mutation_kills.py",
            "integration/test_stampede.py",
            "integration/test_contract_redis.py",
            "integration/test_warmup.py",
            "integration/test_mutation_kills.py",
        ],
    },
    "keys": {
        "files": ["twotier/_keys.py"],
        "tests": [
            "tests/test_keys.py",
            "tests/test_memory_cache.py",
            "tests/test_contract_memory.py",
            "tests/test_public_api.py",
            "tests/test_mutation_kills.py",
            "integration/test_keys_redis.py",
        ],
    },
    "lua": {
        "files": [
            "twotier/lua/prelude.lua",
            "twotier/lua/server.lua",
            "twotier/lua/versions.lua",
            "twotier/lua/claim.lua",
            "twotier/lua/fill.lua",
            "twotier/lua/write.lua",
            "twotier/lua/drop.lua",
            "twotier/lua/invalidate.lua",
            "twotier/lua/announce.lua",
            "twotier/lua/release.lua",
            "twotier/lua/compact.lua",
        ],
        "tests": [
            "integration/test_mutation_kills.py",
            "integration/test_contract_redis.py",
            "integration/test_stampede.py",
            "integration/test_warmup.py",
            "integration/test_garbage.py",
            "integration/test_keys_redis.py",
            "integration/test_coherence.py",
            "integration/test_stale.py",
            "integration/test_faults.py",
            "integration/test_hangs.py",
            "integration/test_outbox.py",
            "integration/test_resources.py::test_compaction_never_brings_an_invalidated_entry_back",
            "integration/test_resources.py::test_slow_fill_is_refused_even_after_compaction",
            "integration/test_resources.py::test_slow_fill_with_a_longer_lease_than_the_writers_is_refused",
            "integration/test_resources.py::test_tag_versions_stay_bounded_under_constant_invalidation",
        ],
    },
    "applier": {
        "files": ["twotier/_applier.py"],
        "tests": [
            "tests/test_mutants_applier.py",
            "tests/test_memory_cache.py",
            "tests/test_contract_memory.py",
            "tests/test_events.py",
            "integration/test_mutants_applier.py",
            "integration/test_read_races.py",
            "integration/test_contract_redis.py",
            "integration/test_hostile_messages.py",
            "tests/test_hints.py",
            "integration/test_cluster_ops.py::test_a_tag_invalidation_that_waits_past_its_budget_is_hinted_to_the_others",
        ],
    },
    "hints": {
        "files": ["twotier/_hints.py"],
        "tests": [
            "tests/test_hints.py",
            "integration/test_cluster_ops.py::test_a_change_of_a_key_that_waits_past_its_budget_is_hinted_to_the_others",
            "integration/test_cluster_ops.py::test_a_tag_invalidation_that_waits_past_its_budget_is_hinted_to_the_others",
        ],
    },
    "envelope": {
        "files": ["twotier/_envelope.py"],
        "tests": [
            "tests/test_mutants_envelope.py",
            "tests/test_mirror.py",
            "integration/test_mutants_envelope.py",
            "integration/test_contract_redis.py",
            "integration/test_mutation_kills.py",
            "integration/test_hostile_values.py",
            "integration/test_stale.py",
        ],
    },
    "changes": {
        "files": ["twotier/_changes.py"],
        "tests": [
            "tests/test_mutants_changes.py",
            "tests/test_loop_end.py",
            "tests/test_memory_cache.py",
            "tests/test_contract_memory.py",
            "tests/test_events.py",
            "integration/test_mutants_changes.py",
            "integration/test_mutants_reads.py",
            "integration/test_contract_redis.py",
            "integration/test_read_races.py",
            "integration/test_outbox.py",
            "integration/test_faults.py",
            "tests/test_hints.py",
            "integration/test_cluster_ops.py::test_a_change_of_a_key_that_waits_past_its_budget_is_hinted_to_the_others",
        ],
    },
    "mirror": {
        "files": ["twotier/_mirror.py"],
        "tests": [
            "tests/test_mirror.py",
            "tests/test_mutants_mirror.py",
            "integration/test_mutants_mirror.py",
            "integration/test_contract_redis.py",
            "integration/test_hostile_messages.py",
        ],
    },
    "reads": {
        "files": ["twotier/_reads.py"],
        "tests": [
            "tests/test_mutants_reads.py",
            "tests/test_copy_plans.py",
            "tests/test_memory_cache.py",
            "tests/test_contract_memory.py",
            "integration/test_mutants_reads.py",
            "integration/test_read_races.py",
            "integration/test_contract_redis.py",
            "integration/test_stale.py",
        ],
    },
    "local": {
        "files": ["twotier/_local.py"],
        "tests": [
            "tests/test_local.py",
            "tests/test_copy_plans.py",
            "tests/test_mutants_local.py",
            "tests/test_memory_cache.py",
            "tests/test_contract_memory.py",
            "integration/test_contract_redis.py",
        ],
    },
    "pipe": {
        "files": ["twotier/_pipe.py"],
        "tests": [
            "tests/test_batch.py",
            "tests/test_mutants_pipe.py",
            "integration/test_mutants_pipe.py",
            "integration/test_read_pipe.py",
            "integration/test_contract_redis.py",
            "integration/test_parsers.py",
            "integration/test_hangs.py",
        ],
    },
    "batch": {
        "files": ["twotier/_batch.py"],
        "tests": [
            "tests/test_batch.py",
            "tests/test_mutants_batch.py",
            "tests/test_resp_fuzz.py",
            "integration/test_parsers.py",
        ],
    },
    "channel": {
        "files": ["twotier/_channel.py"],
        "tests": [
            "tests/test_batch.py",
            "tests/test_mutants_channel.py",
            "integration/test_mutants_channel.py",
            "integration/test_hostile_messages.py",
            "integration/test_parsers.py",
            "integration/test_coherence.py",
        ],
    },
    "shared": {
        "files": ["twotier/_shared.py"],
        "tests": [
            "tests/test_mutants_shared.py",
            "integration/test_mutants_shared.py",
            "integration/test_contract_redis.py",
            "integration/test_read_races.py",
            "integration/test_stale.py",
            "integration/test_coherence.py",
            "integration/test_hangs.py",
        ],
    },
    "link": {
        "files": ["twotier/_link.py"],
        "tests": [
            "integration/test_mutants_link.py",
            "integration/test_hostile_messages.py",
            "integration/test_faults.py",
            "integration/test_coherence.py",
            "integration/test_heartbeat.py",
        ],
    },
    "subscriber": {
        "files": ["twotier/_subscriber.py"],
        "tests": [
            "integration/test_mutants_subscriber.py",
            "integration/test_hostile_messages.py",
            "integration/test_coherence.py",
            "integration/test_faults.py",
            "integration/test_heartbeat.py",
            "integration/test_replica_fanout.py",
        ],
    },
    "serialization": {
        "files": ["twotier/_serialization.py"],
        "tests": [
            "tests/test_serialization.py",
            "tests/test_mutants_serialization.py",
            "tests/test_contract_memory.py",
            "integration/test_hostile_values.py",
        ],
    },
}

#: Hand-written semantic mutants: (module, file, exact text, replacement, what it breaks).
#: The text must occur exactly once in the file; if the library changed and it no
#: longer does, the mutant is reported as "stale" and not counted.
HAND: list[tuple[str, str, str, str, str]] = [
    (
        "outbox",
        "twotier/_outbox.py",
        "            keys = tuple(self._keys)\n            await remote.delete(keys)",
        "            keys = tuple(self._keys)\n            self._keys.clear()\n"
        "            await remote.delete(keys)",
        "keys are forgotten before their delivery succeeded",
    ),
    (
        "outbox",
        "twotier/_outbox.py",
        "            tags = tuple(self._tags)\n            await remote.invalidate(tags)",
        "            tags = tuple(self._tags)\n            self._tags.clear()\n"
        "            await remote.invalidate(tags)",
        "tags are forgotten before their delivery succeeded",
    ),
    (
        "outbox",
        "twotier/_outbox.py",
        "            self._counters.dropped_ops += len(self)\n            self.add_clear()",
        "            self._counters.dropped_ops += len(self)\n"
        "            self._keys.clear()\n            self._tags.clear()",
        "an overflowing outbox drops its changes instead of collapsing into a clear",
    ),
    (
        "guard",
        "twotier/_guard.py",
        "            self.errors += 1\n            self._note(exc)\n"
        "            raise BackendError(",
        "            self._failed(exc)\n            raise BackendError(",
        "a refused command (script error, NOPERM, OOM) counts as an outage",
    ),
    (
        "guard",
        "twotier/_guard.py",
        "async with asyncio.timeout(self._probe_timeout):",
        "async with asyncio.timeout(None):",
        "the probe's PING has no time bound",
    ),
    (
        "guard",
        "twotier/_guard.py",
        "self._failures >= self._threshold",
        "self._failures >= 1",
        "the breaker opens on the first failure",
    ),
    (
        "flights",
        "twotier/_flights.py",
        "return await asyncio.shield(self._future)",
        "return await self._future",
        "a cancelled waiter cancels the shared result of the others",
    ),
    (
        "flights",
        "twotier/_flights.py",
        "if self._by_key.get(flight.key) is flight:",
        "if flight.key in self._by_key:",
        "an ending flight unregisters a newer flight of the same key",
    ),
    (
        "flights",
        "twotier/_flights.py",
        "flight = self._by_key.pop(key, None)",
        "flight = self._by_key.get(key)",
        "an invalidated flight stays joinable",
    ),
    (
        "keys",
        "twotier/_keys.py",
        'hashlib.sha256(key.encode("utf-8", "surrogatepass"))',
        'hashlib.sha256(key[:MAX_KEY_LENGTH].encode("utf-8", "surrogatepass"))',
        "long keys with a common prefix share one hashed key",
    ),
    (
        "keys",
        "twotier/_keys.py",
        "    items.sort()\n",
        "    items.sort(key=lambda item: item[1])\n",
        "a dict argument's key depends on its insertion order (sorted by value, ties kept)",
    ),
    (
        "keys",
        "twotier/_keys.py",
        '",".join([repr(v) for _, v in kept])',
        '",".join([f"{k}={v!r}" for k, v in kept])',
        "a call with keywords gets another key than the same call by position",
    ),
    (
        "keys",
        "twotier/_keys.py",
        "MAX_ARGUMENT_DEPTH = 100",
        "MAX_ARGUMENT_DEPTH = 100_000",
        "deeply nested arguments reach Python's recursion limit",
    ),
    (
        "lua",
        "twotier/lua/invalidate.lua",
        "math.max(seq, (tonumber(current[i + 1]) or 0) + 1)",
        "seq",
        "a tag version can return to an old value when the counter and log were lost",
    ),
    (
        "lua",
        "twotier/lua/compact.lua",
        "math.floor(now[2] / 1000) - horizon",
        "math.floor(now[2] / 1000) + horizon",
        "compaction drops the versions of tags bumped within the horizon",
    ),
    (
        "lua",
        "twotier/lua/claim.lua",
        "if held and string.find(held, '@' .. generation, 1, true) then",
        "if held then",
        "a lease from before a clear() or a restore is waited on, not taken over",
    ),
]

#: Mutants that cannot change behaviour, by id (see --list), each with its reason; they
#: are not counted. An id is a hash of the file, the line's text and the mutation, so an
#: edit of that line drops the entry (--list warns) and the mutant is judged again.
#: Two are timing boundaries rather than strict equivalents (marked so): they differ
#: only within one millisecond of Redis's clock, which no test can aim at.
EQUIVALENT: dict[str, str] = {
    # twotier/_batch.py (stop 24)
    "batch-bf6eb6": "Incomplete without super().__init__: BaseException.__new__ already sets args to (at, needed, line), so args, str and repr are unchanged",
    "batch-8e831f": "end <= 0 differs from end < 0 only when a CRLF starts the buffer at pos 0; both paths then refuse the type byte CR with the same _refuse_type error",
    "batch-faf8de": "bulk length fast path made stricter (digits[0] != 48 and one digit): the lengths it no longer takes go to _integer, which returns the same value or refuses the same; constant cost only",
    "batch-9f5a85": "integer fast path made stricter (digits[0] != 48 and one digit): the values it no longer takes go to _integer, which returns the same value or refuses the same; constant cost only",
    "batch-f546cb": "_cr not set in __init__: it is only read in feed while _need == _LINE, which only gets' Incomplete branch sets, and that branch sets _cr first",
    "batch-eee8f1": "_cr = True in __init__: overwritten by gets' Incomplete branch before it can be read (read only while _need == _LINE)",
    "batch-9e43da": "unfinished()'s _parts branch is unreachable: chunks go to _parts only while pos < len(buf), and pos reaches len(buf) only when gets has joined and emptied _parts",
    "batch-1cee42": "deleting the final 'return None' of unfinished(): the function returns None implicitly",
    "batch-8e7998": "deleting 'return None' in _hiredis' ImportError branch: returns None implicitly (and hiredis is installed)",
    "batch-4f3089": "deleting the final 'return None' of _hiredis: returns None implicitly",
    "batch-1944ba": "probe == 0 or int: no hiredis state makes the probe ':0\\r\\n' read as an int other than 0 (it completes the pending line into a refused integer/length/bool, a string, an error or a list) nor as a non-int equal to 0 (False needs '#f')",
    "batch-a710c5": "the raise when the hand-written reader finds fewer replies than hiredis in the same bytes: unreachable while the two readers agree (tests/test_resp_fuzz.py); where they differ (RESP3 types twotier never gets) the hand-written reader raises InvalidResponse itself",
    # twotier/_serialization.py (stop 24)
    "serialization-29833d": "deleting the `continue` for a container met again only re-packs a shared object: the entry replaced is equal (same list/dict content, same ExtType bytes), and every parent is processed after all occurrences of its children, so the bytes written are identical (the extra work is one more packing per occurrence, which the output already carries in full: msgpack has no references)",
    "serialization-00ce9d": "_Pending.items is assigned (node.items = _document(...)) for every pending the walk visits before anything reads it, and every pending sits in a list, dict (keys included) or pending's items, all of which the walk visits; the initial [] is never read",
    "serialization-86037c": "_Pending.value is assigned (node.value = node.build(...)) for every pending in the walk's order, children before parents (reversed pre-order), before _settle/_settled or the root's return read it; the initial None is never read",
    # twotier/_subscriber.py, twotier/_changes.py (stop 24)
    "subscriber-762534": "the __init__ default of _subscription is never read: the listener task's first step sets it (line 178, no suspension before it on a non-cluster bus) before anything can call reconnect(), whose only caller is the Sentinel watch (_link._master_moved); a cluster bus, which does suspend first, has no Sentinel watch",
    "subscriber-5448d3": "the __init__ value of _replay_floor is never read: _handle only runs after the first _resync, which always takes the first-connection branch (_last_seq is None) and sets the floor to 0 itself",
    "subscriber-ed2eb6": "the __init__ value of _server_id is never read: it is compared only when _last_seq is not None, i.e. after the first _resync, which sets it",
    "subscriber-5d5804": "the re-raise of CancelledError in run(): swallowing it ends the task with None instead of cancelled; nothing reads the task's result or cancelled() (stop() and asyncio.run's shutdown only wait for done), and the handler's effects (mirror untrusted, L1 suspended) are the same",
    "subscriber-2077a2": "`loop.time() > back_to_a_replica` as `>=`: the loop clock is a float read after at least one awaited interval, so the two differ only at one exact instant, which no schedule can aim at",
    "subscriber-af42ba": "the finally's `self._subscription = None`: without it reconnect() between two attempts closes the old, already closed subscription again, and redis-py's disconnect of a closed connection is a no-op; the next attempt overwrites the field before any await",
    "subscriber-691c73": "`message.seq > last + 1` -> `>=`: the branch is reached only when message.seq != last + 1 (the branch above takes equality), so both compare alike",
    "subscriber-41450b": "the last `return None` of _handle: a function that falls off its end returns None",
    "changes-e208f0": "the default of deliver_before_close's final is never used: its one caller (_cache.py _settle_changes) always passes final= explicitly",
    # twotier/_keys.py
    "keys-5dafe2": "hash_long_key's own length check: its callers pass only keys over "
    "200 characters, so `<` and `<=` never differ",
    "keys-433b8e": "a scalar without the early return reaches _encode_repr, which returns "
    "the same repr (a scalar's repr never starts with '<')",
    "keys-ab185d": "the one-scalar shortcut's return removed: the general fast path right "
    "after it builds the identical key",
    "keys-f9d39b": "the fast path's return removed: _slow_key builds the identical key from "
    "the same scalars",
    "keys-492924": "bind's shortcut removed: Signature.bind gives the same mapping for such a call",
    "keys-870a2d": "zip(strict=False): the lengths were checked equal just before",
    "keys-dffbff": "tags() without its early return renders no template and returns () all "
    "the same",
    # twotier/lua/
    "lua-84d455": "note_horizon `>=`: writing an equal horizon again changes nothing",
    "lua-9f93cf": "announce: XADD's success reply is a string, whose ['err'] is nil, so "
    "`or` and `and` agree",
    # twotier/_local.py
    "local-97da5a": "is_immutable's last `return False` removed: None, and every caller "
    "only tests its truth",
    "local-a51479": "Entry.tags() of an untagged entry: only tagged entries are asked (_outdated)",
    "local-f936b1": "tag2 left unset with three tags or more: it is read only when `tag` is "
    "not the tuple of them",
    "local-53ef8a": "_outdated's last `return False` removed: None, and its callers only "
    "test its truth",
    "local-81b593": "threshold boundary (not strict): the first sweep starts at the 1024th "
    "remembered tag instead of the 1025th; both bound the memory alike",
    "local-48c633": "the sweep's end keeps the invalidation stamped exactly when it began "
    "(`>` -> `>=`): no entry is older than it, so it outdates none; one tag kept longer",
    "local-df2872": "purge's shortcut removed: with nothing remembered the walk drops nothing "
    "and forgets nothing (no sweep can run then)",
    "local-4ae95d": "a sweep left running by purge(): it finds each entry as purge left it, "
    "and its end forgets nothing, every later stamp being newer than its start",
    "local-478392": "clear() keeping the remembered invalidations: every entry stored after "
    "it has a stamp no older than they, so they outdate none, and sweeps still bound them",
    "local-786908": "a sweep left running by clear(): its keys are gone or stored since "
    "(checked like any), and clear() forgot every invalidation it could forget",
    "local-39adc0": "Literal[True] -> Literal[False] in copy_plan's return annotation, "
    "never evaluated (postponed annotations)",
    "local-6912bf": "_swept_to's first value: a sweep sets it when it begins, before any read",
    "local-f97bbe": "_sweep_rate's first value: a sweep sets it when it begins, before any read",
    # twotier/_mirror.py
    "mirror-613023": "_Load.cleared_to's first value: read only once `cleared` is set, and "
    "both places that set it set cleared_to too",
    "mirror-0a63ad": "_Load.trusted's first value: _send sets it before anything reads it",
    "mirror-f9c046": "_Load.trusted's first value: _send sets it before anything reads it",
    "mirror-044897": "newer() on a tie returns the other one: versions are Redis's decimal "
    "integers, so equal numbers are equal strings",
    "mirror-4cdbee": "judge's zip(strict=False): unpack() gives as many versions as tags "
    "(it refuses an even field count)",
    "mirror-d2e4c8": "_send's zip(strict=False): versions.lua answers one version per tag; "
    "a short reply would fail either way (KeyError in _load instead of ValueError here)",
    "mirror-f53f69": "_remember's zip(strict=False): its callers pass a dict's keys and values",
    # twotier/_reads.py
    "reads-9e7e3b": "`unsettled and touches((), key)` -> `or`: when touches() is false, "
    "settle((), key) finds nothing to wait for (the same clears and key), so both skip",
    "reads-c25656": "timing boundary (not strict): `ttl > 0` -> `>=` differs only for an "
    "entry read at the very millisecond it expires",
    # twotier/_applier.py
    "applier-cad785": "a clear's message without its generation: Redis's always carries one, "
    "and memory mode's (which has none) meets no mirror, as it has no L2",
    # twotier/_channel.py
    "channel-2a2259": "next() without the `continue` after a read: _frame(MORE) is None (MORE "
    "is a bare object), so the loop goes round to gets() all the same",
    # twotier/_shared.py
    "shared-2ba20f": "lookup's default drop=True -> False: its only callers (_reads) always "
    "pass drop= explicitly",
    "shared-a6a842": "judged's default drop=True -> False: every caller (lookup, claim, "
    "warmup) passes drop= explicitly",
    "shared-10d307": "snapshot's `return None` after the except: the function ends right "
    "there, and returns None all the same",
    # twotier/_link.py
    "link-18693e": "_on_link_lost's _degrade() with the breaker open: it opens only through "
    "_on_redis_down, which degraded already, and only _recovered, breaker closed, undoes it",
    "link-b0aec4": "timing (not strict): close() cancels each loop until it is done; the flag "
    "only ends at once a compactor whose cancel a Redis call swallowed, one timeout sooner",
    "link-698901": "timing (not strict): close() cancels each loop until it is done; the flag "
    "only ends at once a compactor whose cancel a Redis call swallowed, one timeout sooner",
    # twotier/_pipe.py
    "pipe-d895a7": "_ReadOnly's super().__init__(reply): raised and caught within call(), "
    "which reads only .reply, never the exception's args",
    "pipe-9a67f6": "call()'s `return exc.reply` removed: the function goes on to "
    "`return reply`, the same ReadOnlyError object",
    "pipe-be0b2d": "timing (not strict): after READONLY the reply was read in full, nothing is "
    "left to send, so waiting for the close only returns one loop turn later",
    "pipe-d6fdea": "timing (not strict): a failed connect has written at most the handshake, "
    "which the kernel took, so waiting for the close only takes one loop turn more",
    "pipe-b6e045": "free()'s `return False` removed: None instead, and both callers "
    "(call_in_turn, RedisTier's command path) only test its truth",
    "pipe-41502f": "free()'s `_ready = False`: _ready is never True on a closed connection "
    "(every disconnect clears it first, and only connect() sets it, once open)",
    "pipe-412d11": "_send's `_ready = False` on the pool path: _ready is never True on a "
    "closed connection (every disconnect clears it first)",
    "pipe-2fb4e7": "a turn's check `_ready or is_connected`: at a hand-over both are True or "
    "both False (a turn queues only while ready; a reconnect starts only while idle or by "
    "the holder, after the turns were served)",
    "pipe-7a6508": "the cancelled turn left in _turns: _hand_over pops and skips done turns, "
    "and nothing else reads the list",
    "pipe-245fa1": "_lead's `mine = None`: the lead goes to live[0], whose future is `own`, so "
    "the loop always assigns mine before the return",
    "pipe-7325f3": "_lead's zip(strict=False): _send returns one reply per name",
    "pipe-bd0356": "_send's zip(strict=False): read_replies returns exactly one reply per name",
    "pipe-bef321": "timing (not strict): close() no longer waits for the connect it cancelled; "
    "that task ends at the loop's next turn, closes its socket, and cannot set _ready",
    "pipe-c40117": "timing (not strict): close() leaves _ready set on a closed connection; "
    "every check but one pairs it with is_connected, and a command it queues is told "
    "NOT_READY once the closed batch fails, a few loop turns later",
    "pipe-426e16": "timing (not strict): as pipe-c40117 (close() sets _ready True on the "
    "closed connection)",
    "pipe-e20b8e": "connect()'s disconnect on failure: the installed redis-py (8.2) closes a "
    "socket whose handshake failed or was cancelled itself (none is open if the TCP connect "
    "failed); the line guards older redis-py",
}


# --- mutants ----------------------------------------------------------------------------------


@dataclass
class Mutant:
    module: str
    path: str  # relative to the repository root
    line: int
    operator: str
    description: str
    source_line: str  # the original line, stripped
    start: int  # character span replaced in the file's text
    end: int
    replacement: str
    key: str = ""  # stable identity: file, line text, mutation (not the line number)
    id: str = ""
    status: str = "pending"  # killed | survived | equivalent | stale
    killed_by: str = ""
    seconds: float = 0.0

    def finish(self) -> None:
        digest = hashlib.sha1(self.key.encode(), usedforsecurity=False).hexdigest()
        self.id = f"{self.module}-{digest[:6]}"

    def apply(self, text: str) -> str:
        return text[: self.start] + self.replacement + text[self.end :]

    def where(self) -> str:
        return f"{self.path}:{self.line}"


class _Text:
    """Character offsets of a file's text from AST (line, UTF-8 byte column) positions."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = text.splitlines(keepends=True)
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))

    def offset(self, lineno: int, col: int) -> int:
        line = self.lines[lineno - 1]
        return self.starts[lineno - 1] + len(line.encode()[:col].decode())

    def start(self, node: ast.AST) -> int:
        return self.offset(node.lineno, node.col_offset)  # type: ignore[attr-defined]

    def end(self, node: ast.AST) -> int:
        return self.offset(node.end_lineno, node.end_col_offset)  # type: ignore[attr-defined]

    def line_of(self, pos: int) -> int:
        lo, hi = 0, len(self.starts) - 1
        while lo < hi - 1:
            mid = (lo + hi) // 2
            if self.starts[mid] <= pos:
                lo = mid
            else:
                hi = mid
        return lo + 1


_CMP = {
    ast.Lt: (r"<(?!=)", "<", "<="),
    ast.LtE: (r"<=", "<=", "<"),
    ast.Gt: (r">(?!=)", ">", ">="),
    ast.GtE: (r">=", ">=", ">"),
    ast.Eq: (r"==", "==", "!="),
    ast.NotEq: (r"!=", "!=", "=="),
    ast.Is: (r"\bis\b(?!\s+not\b)", "is", "is not"),
    ast.IsNot: (r"\bis\s+not\b", "is not", "is"),
    ast.In: (r"(?<!not )\bin\b", "in", "not in"),
    ast.NotIn: (r"\bnot\s+in\b", "not in", "in"),
}
_DELETABLE = (
    ast.Assign,
    ast.AnnAssign,
    ast.AugAssign,
    ast.Expr,
    ast.Return,
    ast.Raise,
    ast.Delete,
    ast.Continue,
    ast.Break,
)


def python_mutants(module: str, path: str, text: str) -> list[Mutant]:
    """Comparison flips (< <=, > >=, == !=, is / is not, in / not in), and <-> or,
    `not` removed, + <-> - next to an int, += <-> -=, True <-> False, and each
    statement inside a function body deleted (replaced by `pass`)."""
    src = _Text(text)
    tree = ast.parse(text)
    found: list[Mutant] = []

    def add(operator: str, start: int, end: int, replacement: str, description: str) -> None:
        line = src.line_of(start)
        found.append(
            Mutant(
                module,
                path,
                line,
                operator,
                description,
                src.lines[line - 1].strip(),
                start,
                end,
                replacement,
            )
        )

    def swap_in(lo: int, hi: int, pattern: str, new: str, operator: str, description: str) -> None:
        match = re.search(pattern, text[lo:hi])
        if match:
            add(operator, lo + match.start(), lo + match.end(), new, description)

    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for child in ast.walk(node):
                in_function.add(id(child))

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for i, op in enumerate(node.ops):
                pattern, old, new = _CMP[type(op)]
                lo, hi = src.end(operands[i]), src.start(operands[i + 1])
                swap_in(lo, hi, pattern, new, "compare", f"'{old}' -> '{new}'")
        elif isinstance(node, ast.BoolOp):
            old, new = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
            for a, b in zip(node.values, node.values[1:], strict=False):
                swap_in(
                    src.end(a), src.start(b), rf"\b{old}\b", new, "boolean", f"'{old}' -> '{new}'"
                )
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            lo, hi = src.start(node), src.start(node.operand)
            swap_in(lo, hi, r"not\s*", "", "not", "remove 'not'")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
            ints = [
                o
                for o in (node.left, node.right)
                if isinstance(o, ast.Constant) and type(o.value) is int
            ]
            if ints:
                old, new = ("+", "-") if isinstance(node.op, ast.Add) else ("-", "+")
                lo, hi = src.end(node.left), src.start(node.right)
                swap_in(lo, hi, re.escape(old), new, "arithmetic", f"'{old}' -> '{new}'")
        elif isinstance(node, ast.AugAssign) and isinstance(node.op, (ast.Add, ast.Sub)):
            old, new = ("+=", "-=") if isinstance(node.op, ast.Add) else ("-=", "+=")
            lo, hi = src.end(node.target), src.start(node.value)
            swap_in(lo, hi, re.escape(old), new, "arithmetic", f"'{old}' -> '{new}'")
        elif isinstance(node, ast.Constant) and type(node.value) is bool:
            new = str(not node.value)
            add("constant", src.start(node), src.end(node), new, f"{node.value} -> {new}")

    for node in ast.walk(tree):
        if not isinstance(node, _DELETABLE) or id(node) not in in_function:
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring
        if isinstance(node, ast.AnnAssign) and node.value is None:
            continue  # a declaration only
        first = src.lines[node.lineno - 1].strip()
        shown = first if len(first) <= 60 else first[:57] + "..."
        add("delete", src.start(node), src.end(node), "pass", f"delete '{shown}'")

    return _finish(found, text, compiles=True)


# Lua: code outside strings and comments, then simple textual operators.
_LUA_OPS = [
    (r"==", "~=", "compare"),
    (r"~=", "==", "compare"),
    (r"<=", "<", "compare"),
    (r"<(?!=)", "<=", "compare"),
    (r">=", ">", "compare"),
    (r">(?!=)", ">=", "compare"),
    (r"\band\b", "or", "boolean"),
    (r"\bor\b", "and", "boolean"),
    (r"\+\s*1\b", "+ 0", "arithmetic"),
    (r"\bnot\s+", "", "not"),
]


def _lua_code_mask(line: str) -> str:
    """The line with string contents and comments blanked (same length)."""
    out = []
    quote = ""
    i = 0
    while i < len(line):
        ch = line[i]
        if quote:
            if ch == "\\":
                out.append("  ")
                i += 2
                continue
            out.append(" " if ch != quote else ch)
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
            out.append(ch)
        elif line.startswith("--", i):
            out.append(" " * (len(line) - i))
            break
        else:
            out.append(ch)
        i += 1
    return "".join(out)[: len(line)]


def _lua_adder(
    found: list[Mutant], module: str, path: str, number: int, stripped: str, offset: int
) -> Callable[[str, int, int, str, str], None]:
    def add(operator: str, lo: int, hi: int, new: str, description: str) -> None:
        found.append(
            Mutant(
                module, path, number, operator, description, stripped, offset + lo, offset + hi, new
            )
        )

    return add


def lua_mutants(module: str, path: str, text: str) -> list[Mutant]:
    """== <-> ~=, < <=, > >=, and <-> or, `+ 1` -> `+ 0`, `not` removed, and each
    redis.call(...) statement deleted."""
    found: list[Mutant] = []
    offset = 0
    for number, raw in enumerate(text.splitlines(keepends=True), start=1):
        line = raw.rstrip("\n")
        code = _lua_code_mask(line)
        at = (module, path, number, line.strip(), offset)
        add = _lua_adder(found, *at)

        for pattern, new, operator in _LUA_OPS:
            for match in re.finditer(pattern, code):
                told = "remove 'not'" if operator == "not" else f"'{match.group(0)}' -> '{new}'"
                add(operator, match.start(), match.end(), new, told)
        for match in re.finditer(r"(^|\bthen\b|\bdo\b|\belse\b)(\s*)(redis\.call\()", code):
            begin = match.start(3)
            depth, close = 0, -1
            for i in range(match.end(3) - 1, len(code)):
                if code[i] == "(":
                    depth += 1
                elif code[i] == ")":
                    depth -= 1
                    if depth == 0:
                        close = i
                        break
            if close < 0:
                continue
            call = line[begin : close + 1]
            shown = call if len(call) <= 50 else call[:47] + "..."
            if not code[:begin].strip() and not code[close + 1 :].strip():
                add("delete", 0, len(line), "", f"delete '{shown}'")
            else:
                add("delete", begin, close + 1, "", f"delete '{shown}'")
        offset += len(raw)
    return _finish(found, text, compiles=False)


def _finish(found: list[Mutant], text: str, compiles: bool) -> list[Mutant]:
    found.sort(key=lambda m: (m.start, m.operator, m.description))
    seen: dict[str, int] = {}
    line_copies: dict[tuple[int, str], int] = {}
    copies: dict[str, int] = {}
    kept = []
    for m in found:
        if (m.line, m.source_line) not in line_copies:
            copies[m.source_line] = copies.get(m.source_line, 0) + 1
            line_copies[(m.line, m.source_line)] = copies[m.source_line]
        if compiles:
            try:
                compile(m.apply(text), m.path, "exec")
            except SyntaxError:
                continue
        base = f"{m.path}|{m.source_line}|{line_copies[(m.line, m.source_line)]}|{m.description}"
        seen[base] = seen.get(base, 0) + 1
        m.key = f"{base}|{seen[base]}"
        m.finish()
        kept.append(m)
    return kept


def hand_mutants(module: str, texts: dict[str, str]) -> list[Mutant]:
    found = []
    for mod, path, old, new, what in HAND:
        if mod != module:
            continue
        text = texts[path]
        count = text.count(old)
        start = text.find(old)
        line = text.count("\n", 0, start) + 1 if count == 1 else 0
        m = Mutant(mod, path, line, "hand", what, old.strip().splitlines()[0], start,
                   start + len(old), new)  # fmt: skip
        m.key = f"{path}|hand|{old}|{new}"
        m.finish()
        if count != 1:
            m.status = "stale"  # the library changed: this text is gone (or ambiguous)
        found.append(m)
    return found


def generate(copy: Path, modules: list[str]) -> list[Mutant]:
    mutants: list[Mutant] = []
    for module in modules:
        texts = {p: (copy / p).read_text() for p in MODULES[module]["files"]}
        for path, text in texts.items():
            make = lua_mutants if path.endswith(".lua") else python_mutants
            mutants.extend(make(module, path, text))
        mutants.extend(hand_mutants(module, texts))
    for m in mutants:
        if m.id in EQUIVALENT:
            m.status = "equivalent"
    return mutants


# --- copies of the repository ------------------------------------------------------------------


GIT = shutil.which("git") or "git"


def git(*args: str) -> str:
    return subprocess.run(
        [GIT, *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


def make_snapshot(rev: str, working_tree: bool, include: list[str], into: Path) -> None:
    """The repository's files at *rev* (or as they are in the working tree) in *into*."""
    into.mkdir(parents=True)
    if working_tree:
        names = git("ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
        for name in filter(None, names):
            source = ROOT / name
            if source.is_file():
                (into / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, into / name)
    else:
        archive = subprocess.run(
            [GIT, "archive", "--format=tar", rev], cwd=ROOT, check=True, capture_output=True
        ).stdout
        tar_path = into.parent / "snapshot.tar"
        tar_path.write_bytes(archive)
        with tarfile.open(tar_path) as tar:
            if hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later
                tar.extractall(into, filter="data")
            else:  # our own repository's archive
                tar.extractall(into)  # noqa: S202
        tar_path.unlink()
    for name in include:
        (into / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, into / name)


def default_python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    if sys.prefix != sys.base_prefix or not venv.exists():
        return sys.executable
    return str(venv)


def environment(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a restored file must never meet a mutant's .pyc
    env.pop("PYTEST_ADDOPTS", None)
    return env


def check_import(python: str, copy: Path) -> tuple[str, list[str]]:
    """Where `twotier` is imported from in *copy*, and the servers installed."""
    probe = (
        "import json, twotier, twotier._redis as r; from twotier.testing import available_servers;"
        "print(json.dumps([twotier.__file__, r.__file__, available_servers()]))"
    )
    out = subprocess.run(
        [python, "-c", probe], cwd=copy, env=environment(copy), capture_output=True, text=True
    )
    if out.returncode != 0:
        sys.exit(f"cannot import twotier in the copy:\n{out.stderr}")
    package, redis_module, servers = json.loads(out.stdout.strip().splitlines()[-1])
    for name in (package, redis_module):
        if not Path(name).resolve().is_relative_to(copy.resolve()):
            sys.exit(f"the copy's twotier is shadowed: imported from {name}, not {copy}")
    return package, servers


# --- running -----------------------------------------------------------------------------------


def _present(copy: Path, test: str) -> bool:
    path, _, name = test.partition("::")
    if not (copy / path).is_file():
        return False
    return not name or f"def {name}(" in (copy / path).read_text()


#: --tests: the same test selection for every module instead of its own.
OVERRIDE: list[str] = []

#: --test-timeout: pytest-timeout's limit per test, in seconds. A mutant that makes a
#: test hang is killed when it runs out; a lower limit makes such mutants cheaper.
TEST_TIMEOUT = [60]


def pytest_command(
    python: str, copy: Path, module: str, servers: list[str], deselect: list[str], stop: bool = True
) -> list[str]:
    tests = [t for t in OVERRIDE or MODULES[module]["tests"] if _present(copy, t)]
    command = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command += ["--timeout", str(TEST_TIMEOUT[0])]
    if stop:
        command.append("-x")
    if "redis" in servers and "valkey" in servers:
        # One flavour is enough to notice a mutant; the suite itself runs both.
        command += ["-k", "not valkey"]
    for node in deselect:
        command += ["--deselect", node]
    return command + tests


def failures(output: str) -> list[str]:
    return [m.group(2) for m in re.finditer(r"^(FAILED|ERROR) (\S+)", output, re.MULTILINE)]


RUNNING: set[subprocess.Popen[str]] = set()
#: Set on Ctrl-C: no further test run starts (the pool's queued work is dropped).
STOP = threading.Event()
STARTING = threading.Lock()


def pooled(pool: ThreadPoolExecutor, work: Callable[[T], R], items: list[T]) -> list[R]:
    """pool.map, but a Ctrl-C stops it at once: without this the pool's exit
    waited for every queued mutant to run."""
    try:
        return list(pool.map(work, items))
    except BaseException:
        with STARTING:
            STOP.set()
            for process in list(RUNNING):
                _kill(process)
        pool.shutdown(wait=False, cancel_futures=True)
        raise


def _kill(process: subprocess.Popen[str]) -> None:
    """The test run and everything it started (its servers): one process group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def run_tests(command: list[str], copy: Path, limit: float) -> tuple[int | None, str, float]:
    began = time.monotonic()
    with STARTING:
        if STOP.is_set():
            return None, "", 0.0
        process = subprocess.Popen(
            command,
            cwd=copy,
            env=environment(copy),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        RUNNING.add(process)
    try:
        output, _ = process.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        _kill(process)
        process.communicate()
        return None, "", time.monotonic() - began
    finally:
        RUNNING.discard(process)
    return process.returncode, output, time.monotonic() - began


def first_failure(output: str) -> str:
    for node in failures(output):
        return node
    for line in reversed(output.splitlines()):
        if line.strip():
            return line.strip()[:120]
    return "?"


class Runner:
    def __init__(self, copies: list[Path], python: str, servers: list[str]) -> None:
        self.free: queue.Queue[Path] = queue.Queue()
        for copy in copies:
            self.free.put(copy)
        self.python = python
        self.servers = servers
        self.limits: dict[str, float] = {}
        self.baselines: dict[str, float] = {}
        self.deselected: dict[str, list[str]] = {}
        self.lock = threading.Lock()
        self.done = 0
        self.total = 0

    def baseline(self, module: str) -> float:
        """Run the module's tests on the unmutated copy. Tests that fail there (the
        library is being changed, or a test is flaky) are left out of the mutant runs
        and reported; if the rest fails a second time too, nothing can be measured."""
        copy = self.free.get()
        deselect: list[str] = []
        try:
            for _attempt in range(2):
                command = pytest_command(
                    self.python, copy, module, self.servers, deselect, stop=False
                )
                code, output, seconds = run_tests(command, copy, 1800)
                if code == 0:
                    break
                failed = failures(output)
                if code != 1 or not failed or deselect:
                    tail = "\n".join(output.splitlines()[-30:])
                    sys.exit(f"the unmutated tests of {module} fail, nothing to measure:\n{tail}")
                deselect = failed
        finally:
            self.free.put(copy)
        self.deselected[module] = deselect
        self.limits[module] = max(120.0, 4 * seconds)
        self.baselines[module] = seconds
        return seconds

    def run(self, mutant: Mutant) -> Mutant:
        copy = self.free.get()
        target = copy / mutant.path
        original = target.read_text()
        try:
            target.write_text(mutant.apply(original))
            deselect = self.deselected[mutant.module]
            command = pytest_command(self.python, copy, mutant.module, self.servers, deselect)
            code, output, mutant.seconds = run_tests(command, copy, self.limits[mutant.module])
        finally:
            target.write_text(original)
            self.free.put(copy)
        if STOP.is_set():
            return mutant  # interrupted: not judged
        # The same command passed on the unmutated copy: any failure is the mutant's
        # doing, be it a failing test, a collection error or an import-time crash.
        if code is None:
            mutant.status, mutant.killed_by = "killed", "(timeout)"
        elif code == 0:
            mutant.status = "survived"
        else:
            mutant.status, mutant.killed_by = "killed", first_failure(output)
        with self.lock:
            self.done += 1
            print(
                f"[{self.done:3}/{self.total}] {mutant.status.upper():8} {mutant.id}  "
                f"{mutant.where():34} {mutant.description}  ({mutant.seconds:.1f}s"
                + (f", {mutant.killed_by}" if mutant.killed_by else "")
                + ")",
                flush=True,
            )
        return mutant


# --- reporting ---------------------------------------------------------------------------------


def summary(mutants: list[Mutant], modules: list[str]) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    for module in [*modules, "total"]:
        mine = [m for m in mutants if module in ("total", m.module)]
        counts = {
            status: sum(m.status == status for m in mine)
            for status in ("killed", "survived", "equivalent", "stale", "pending")
        }
        counted = counts["killed"] + counts["survived"]
        row: dict[str, float] = {"mutants": len(mine), **counts}
        row["score"] = round(100 * counts["killed"] / counted, 1) if counted else 0.0
        table[module] = row
    return table


def print_table(table: dict[str, dict[str, float]]) -> None:
    head = f"{'mutants':>7} {'equiv.':>6} {'killed':>6} {'survived':>8} {'score':>6}"
    print(f"\n{'module':13} {head}")
    for module, row in table.items():
        print(
            f"{module:13} {row['mutants']:7} {row['equivalent']:6} {row['killed']:6} "
            f"{row['survived']:8} {row['score']:5.1f}%"
            + (f"  ({row['stale']} stale)" if row["stale"] else "")
            + (f"  ({row['pending']} not run)" if row["pending"] else "")
        )


def list_mutants(mutants: list[Mutant]) -> None:
    for m in mutants:
        mark = {"equivalent": " [equivalent]", "stale": " [stale]"}.get(m.status, "")
        print(f"{m.id}  {m.where():34} {m.operator:10} {m.description}{mark}")
        print(f"{'':16}| {m.source_line}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--module", action="append", choices=sorted(MODULES),
        help="a module to mutate (repeatable; default: all)")  # fmt: skip
    add("--jobs", type=int, default=2, help="parallel copies (default 2)")
    add("--list", action="store_true", help="list the mutants and stop")
    add("--rev", default="HEAD", help="the commit to test (default HEAD)")
    add("--working-tree", action="store_true",
        help="test the working tree as it is, uncommitted files included")  # fmt: skip
    add("--include", action="append", default=[], metavar="PATH",
        help="copy this file from the working tree over the commit's")  # fmt: skip
    add("--exclude", action="append", default=[], metavar="PATH",
        help="remove this file from the copy (e.g. to measure a test file)")  # fmt: skip
    add("--match", help="only mutants whose id, file:line or description has one of these (a,b)")
    add("--rerun", metavar="JSON", help="only the survivors of an earlier report")
    add("--tests", action="append", default=[], metavar="PATH",
        help="run these tests for every mutant instead of the module's (repeatable)")  # fmt: skip
    add("--python", default=default_python(), help="the interpreter for pytest")
    add("--test-timeout", type=int, default=60, metavar="SECONDS",
        help="pytest-timeout's limit per test (default 60)")  # fmt: skip
    add("--json", default=str(Path(tempfile.gettempdir()) / "twotier-mutation.json"),
        help="where the report goes (default: %(default)s)")  # fmt: skip
    args = parser.parse_args()
    modules = args.module or list(MODULES)
    OVERRIDE.extend(args.tests)
    TEST_TIMEOUT[0] = args.test_timeout

    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="twotier-mutation-"))
    try:
        snapshot = work / "snapshot"
        make_snapshot(args.rev, args.working_tree, args.include, snapshot)
        for name in args.exclude:
            (snapshot / name).unlink(missing_ok=True)
        mutants = generate(snapshot, modules)
        if args.rerun:
            previous = json.loads(Path(args.rerun).read_text())
            again = {m["id"] for m in previous["mutants"] if m["status"] == "survived"}
            mutants = [m for m in mutants if m.id in again]
        if args.match:
            wanted = args.match.split(",")
            mutants = [
                m
                for m in mutants
                if any(w in m.id or w in m.where() or w in m.description for w in wanted)
            ]
        ids = {m.id for m in mutants}
        if args.list:
            list_mutants(mutants)
            for stale in sorted(set(EQUIVALENT) - ids):
                if stale.split("-")[0] in modules:
                    print(f"warning: equivalent mutant {stale} no longer exists", file=sys.stderr)
            print_table(summary(mutants, modules))
            return 0

        copies = [work / f"job{n}" for n in range(max(1, args.jobs))]
        for copy in copies:
            shutil.copytree(snapshot, copy)
        package, servers = check_import(args.python, copies[0])
        revision = "working tree" if args.working_tree else git("rev-parse", args.rev)
        print(f"testing {revision}; twotier imported from {package}; servers: {servers}")

        runner = Runner(copies, args.python, servers)
        with ThreadPoolExecutor(len(copies)) as pool:
            seconds_each = pooled(pool, runner.baseline, modules)
            for module, seconds in zip(modules, seconds_each, strict=True):
                print(f"baseline {module}: passes in {seconds:.1f}s")
                for node in runner.deselected[module]:
                    print(f"  left out, fails unmutated: {node}")
        todo = [m for m in mutants if m.status == "pending"]
        # the slowest modules first, so the jobs finish together
        todo.sort(key=lambda m: -runner.baselines[m.module])
        runner.total = len(todo)
        with ThreadPoolExecutor(len(copies)) as pool:
            pooled(pool, runner.run, todo)
    except KeyboardInterrupt:
        for process in list(RUNNING):
            _kill(process)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)

    elapsed = time.monotonic() - began
    table = summary(mutants, modules)
    print("\nsurvivors:")
    for m in mutants:
        if m.status in ("survived", "stale"):
            print(
                f"  {m.status:8} {m.id}  {m.where():34} {m.description}\n{'':12}| {m.source_line}"
            )
    print_table(table)
    print(f"\n{len(todo)} mutants run in {elapsed / 60:.1f} min with {len(copies)} jobs")
    report = {
        "revision": revision,
        "modules": modules,
        "seconds": round(elapsed, 1),
        "jobs": len(copies),
        "summary": table,
        "left_out": runner.deselected,
        "mutants": [
            {k: v for k, v in asdict(m).items() if k not in ("start", "end")} for m in mutants
        ],
    }
    Path(args.json).write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    print(f"report: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
