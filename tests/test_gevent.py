"""`cache.sync` under gevent's monkey-patching (issue 18, item 3), in memory
mode: `gunicorn -k gevent` runs each request in a greenlet of a patched
process. Before, every call raised `EventLoopError` ("would wait on itself"):
the cache's loop "thread" was a greenlet of the caller's own OS thread.

Each check runs in a fresh interpreter, since patching is for the whole
process. The same with gunicorn's gevent workers and a real server is in
`integration/test_process_models.py`.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("gevent")  # the test extra installs it

PROGRAM = """
from gevent import monkey
monkey.patch_all()

import json, threading, time
import gevent
from twotier import TwoTierCache

cache = TwoTierCache(namespace="gevent")
ticks = []

def ticker():  # another greenlet: it must run while callers wait on the cache
    while True:
        ticks.append(1)
        gevent.sleep(0.001)

gevent.spawn(ticker)
loads = []

@cache.sync.cached(ttl=60, tags=["n:{n}"])
def double(n):
    loads.append(n)
    gevent.sleep(0.02)  # a cooperative query: other greenlets run meanwhile
    return 2 * n

def request(i):
    cache.sync.set(f"k{i}", i, tags=["all"])
    assert cache.sync.get(f"k{i}") == i
    return double(i % 3)

jobs = [gevent.spawn(request, i) for i in range(30)]
gevent.joinall(jobs, timeout=20)
errors = [repr(job.exception) for job in jobs if not job.successful()]
results = sorted({job.value for job in jobs if job.successful()})
before = len(ticks)
cache.sync.get("k1")
warmed = cache.sync.warmup(["a", "b"], lambda key: key.upper())  # a sync loader, in a thread
cache.invalidate_tag("all")  # the seed's un-awaited call
gone = cache.sync.get("k1", "gone")
cache.sync.close()
print(json.dumps({
    "errors": errors, "results": results, "loads": sorted(loads), "warmed": warmed,
    "gone": gone, "ticked": len(ticks) > before, "threads": len(threading.enumerate()),
}))
"""


def test_cache_sync_works_under_gevent() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["errors"] == []
    assert report["results"] == [0, 2, 4]
    assert report["loads"] == [0, 1, 2]  # greenlets missing one key together: one load
    assert report["warmed"] == 2
    assert report["gone"] == "gone"
    assert report["ticked"]  # other greenlets ran while callers waited
    assert "Traceback" not in done.stderr
