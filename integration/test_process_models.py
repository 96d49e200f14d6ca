"""The process models ERP teams run twotier under, with real processes and a
real server (DESIGN §4, guarantee 11; issue 18).

Each test starts the model the way a deployment does — `multiprocessing` with
each start method, … — against a server of its own, and checks coherence the
way users notice its absence: after a change returns in one process, no
process answers the old value once the propagation window has passed. Every
wait has a deadline; nothing asserts on a duration.

The helper applications live in `integration/apps/`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from celery import Celery

from twotier import TwoTierCache
from twotier._redis import Layout
from twotier.cli._ops import glob_escape
from twotier.testing import RedisServer, free_port

from .apps import items
from .conftest import FLAVOURS

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "integration" / "apps"
RUN_TIMEOUT = 120.0  # a whole application run; a hang fails, never stalls the suite
WINDOW = 2.0  # the propagation window: "milliseconds", asserted loosely on a loaded machine


@pytest.fixture(scope="module")
def shared_server() -> Iterator[RedisServer]:
    """One server for the module: the models differ on the client side, not the server's."""
    with RedisServer.start(FLAVOURS[0]) as srv:
        yield srv


def app_env(server: RedisServer, **variables: str) -> dict[str, str]:
    """The environment of an application process: the default cache's `TWOTIER_*`
    settings (a namespace of its own), and this checkout importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOTIER_")}
    env.update(
        TWOTIER_REDIS_URL=server.url,
        TWOTIER_NAMESPACE=f"pm{uuid.uuid4().hex[:8]}",
        TWOTIER_REDIS_TIMEOUT="0.5",  # a loaded CI machine stalls; the default is 0.1
        TWOTIER_DEFAULT_TTL="300",  # long: only an invalidation makes an instance drop an entry
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    env.update(variables)
    return env


def run_json(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run an application to its end; its one JSON line of report."""
    done = subprocess.run(
        args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )
    try:
        report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise AssertionError(
            f"no report (exit status {done.returncode}):\n{done.stdout}\n{done.stderr}"
        ) from None
    report["stderr"] = done.stderr
    report["returncode"] = done.returncode
    return report


# -- multiprocessing -----------------------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_multiprocessing_children_and_parent_stay_coherent(
    shared_server: RedisServer, method: str
) -> None:
    """`integration/apps/mp_app.py`: the parent makes and uses the default cache,
    then starts two children, twice (a second generation after the first has
    gone). Each process in turn sets, invalidates (un-awaited) and deletes;
    every other process held the old value in L1 and must drop it.

    Before the fix, a forked child (or every child of a fork server that had
    imported the cache) kept its parent's `instance_id`, took the others'
    changes for its own, and ignored them: the old value stayed for its TTL.
    """
    report = run_json(
        [sys.executable, "-m", "integration.apps.mp_app", method], app_env(shared_server)
    )
    assert report["error"] is None, report["error"] + "\n" + report["stderr"][-3000:]
    assert report["returncode"] == 0, report["stderr"][-3000:]
    identities = report["identities"]
    parent_before, *children, parent_after = identities
    assert len(children) == 4
    # Every process is its own instance; the parent keeps its identity.
    ids = [identity["instance"] for identity in [parent_before, *children]]
    assert len(set(ids)) == len(ids), identities
    assert parent_after["instance"] == parent_before["instance"]
    assert parent_after["pid"] == parent_before["pid"]
    # Each child runs the cache on a loop thread of its own, named after its own id.
    for child in children:
        assert child["loop_thread"] == f"twotier-{child['instance']}", child
    slowest = max(row["seen_after_ms"] for row in report["timings"])
    print(
        f"\n{method}: {len(report['timings'])} reads of a changed key in 3 processes; "
        f"the slowest saw the change {slowest:.1f} ms after the change returned"
    )


# -- the end of a loop, and of the cache -----------------------------------------------


async def _holds_then_loses(
    server: RedisServer, namespace: str, tags: list[str], change: Callable[[], Any]
) -> float:
    """An observer instance holds one entry per tag in L1; *change* runs (an
    application process, to its end); every entry must be gone within the
    propagation window. Returns how long the last one took."""
    observer = TwoTierCache(redis_url=server.url, namespace=namespace, redis_timeout=0.5)
    async with observer:
        for tag in tags:
            await observer.set(f"entry:{tag}", "old", tags=[tag])
            assert observer.local.get(f"entry:{tag}") == "old"
        await asyncio.to_thread(change)
        start = time.monotonic()
        for tag in tags:
            while await observer.get(f"entry:{tag}", "gone") != "gone":
                assert time.monotonic() - start < WINDOW, (
                    f"the invalidation of {tag!r} never arrived (the process ended)"
                )
                await asyncio.sleep(0.005)
        return time.monotonic() - start


@pytest.mark.parametrize("mode", ["async-with", "run-started", "run-cold"])
async def test_an_unawaited_invalidation_as_the_last_statement_is_delivered(
    shared_server: RedisServer, mode: str
) -> None:
    """`integration/apps/loop_end.py MODE`: the seed's un-awaited
    `cache.invalidate_tag(...)` as the last statement inside `async with
    cache:`, or of an `asyncio.run(...)` (with the cache used before, or not at
    all). Before the fix it was lost in all three: `close()` began before the
    delivery did, which then met a closed cache; `asyncio.run` cancelled the
    delivery task before its first step."""
    env = app_env(shared_server)
    tag = f"report:{mode}"

    def run_app() -> None:
        report = run_json([sys.executable, "-m", "integration.apps.loop_end", mode, tag], env)
        assert report.get("done") == mode, report
        assert report["returncode"] == 0, report["stderr"]
        assert "Traceback" not in report["stderr"], report["stderr"]

    await _holds_then_loses(shared_server, env["TWOTIER_NAMESPACE"], [tag], run_app)


async def test_each_asyncio_run_delivers_and_closes_its_connections(
    shared_server: RedisServer,
) -> None:
    """Ten `asyncio.run` in one process (Celery tasks wrapping async code), each
    ending with an un-awaited invalidation; garbage collection off. Every
    invalidation arrives, and the server's client count does not grow from run
    to run: a loop's connections are closed when it ends, not left to the
    garbage collector (issue 18, item 6: 120 connections after 20 runs)."""
    env = app_env(shared_server)
    tags = [f"task:{i}" for i in range(10)]
    clients: list[int] = []

    def run_app() -> None:
        report = run_json([sys.executable, "-m", "integration.apps.loop_end", "runs", "task"], env)
        assert report["returncode"] == 0, report["stderr"]
        clients.extend(report["clients"])

    await _holds_then_loses(shared_server, env["TWOTIER_NAMESPACE"], tags, run_app)
    assert clients[-1] <= clients[0], f"connected clients after each run: {clients}"


# -- pre-fork web servers --------------------------------------------------------------

READERS = 6  # concurrent HTTP clients: enough to keep every worker busy, so all answer
HTTP_DEADLINE = 30.0  # any one load loop; a worker that never answers fails, not hangs


@dataclass(frozen=True)
class Answer:
    start: float
    pid: int
    instance: str
    value: str


@dataclass
class WebServer:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    workers: int

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def gunicorn(
    app: str,
    args: list[str],
    env: dict[str, str],
    workdir: Path,
    workers: int,
    ready: str = "/item/1",
) -> Iterator[WebServer]:
    """`gunicorn APP ARGS` on a free port, with docs/deployment.md's logging
    configuration, once it answers 200 on *ready*; stopped (SIGTERM, as a
    deployment stops it) on exit."""
    port = free_port()
    log = workdir / f"gunicorn-{port}.log"
    command = [
        sys.executable, "-m", "gunicorn", app, "--bind", f"127.0.0.1:{port}",
        "--workers", str(workers), "--config", str(APPS / "gunicorn_conf.py"),
        "--graceful-timeout", "10", *args,
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
    server = WebServer(f"http://127.0.0.1:{port}", process, log, workers)
    try:
        deadline = time.monotonic() + HTTP_DEADLINE
        while True:
            assert process.poll() is None, f"gunicorn exited:\n{server.output()[-3000:]}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.url}{ready}", timeout=5).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"gunicorn never answered:\n{server.output()}"
            time.sleep(0.1)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(f"gunicorn did not stop:\n{server.output()[-3000:]}") from None


def _worker(reply: httpx.Response) -> tuple[int, str]:
    """The pid and instance of the worker that answered: the test apps say it in
    their JSON, the ERP service (unchanged) in the headers its wrapper adds."""
    if "x-worker-pid" in reply.headers:
        return int(reply.headers["x-worker-pid"]), reply.headers["x-worker-instance"]
    body = reply.json()
    return int(body["pid"]), str(body["instance"])


def _fetch(url: str, field: str = "value") -> Answer:
    """GET *url*; the answer's value is its JSON body's *field*."""
    start = time.monotonic()
    # A connection of its own each time (no keep-alive), so requests spread over the workers.
    reply = httpx.get(url, timeout=10, headers={"Connection": "close"})
    reply.raise_for_status()
    return Answer(start, *_worker(reply), str(reply.json()[field]))


def load_loop(
    url: str, enough: Callable[[list[Answer]], bool], what: str, field: str = "value"
) -> list[Answer]:
    """READERS clients GET *url* in a loop until *enough* holds for what they got."""
    answers: list[Answer] = []
    lock = threading.Lock()
    done = threading.Event()
    deadline = time.monotonic() + HTTP_DEADLINE

    def reader() -> None:
        while not done.is_set() and time.monotonic() < deadline:
            answer = _fetch(url, field)
            with lock:
                answers.append(answer)
                if enough(answers):
                    done.set()

    with concurrent.futures.ThreadPoolExecutor(READERS) as pool:
        for future in [pool.submit(reader) for _ in range(READERS)]:
            future.result()
    if not done.is_set():
        seen = sorted({(a.pid, a.value) for a in answers})
        raise AssertionError(f"not within {HTTP_DEADLINE} s: {what}; (pid, value) seen: {seen}")
    return answers


def _each_worker(answers: list[Answer], workers: int, times: int = 2) -> bool:
    counts = collections.Counter(answer.pid for answer in answers)
    return len(counts) >= workers and all(count >= times for count in counts.values())


def each_answered(value: str, workers: int) -> Callable[[list[Answer]], bool]:
    """Every worker has answered *value* (twice: the second from its L1)."""
    return lambda got: _each_worker([a for a in got if a.value == value], workers)


def each_answered_after(moment: float, workers: int) -> Callable[[list[Answer]], bool]:
    """Every worker has answered requests that started after *moment*."""
    return lambda got: _each_worker([a for a in got if a.start >= moment], workers)


#: A write of check_coherence: (server URL, round) -> (the new value as reads
#: will show it, the write's reply).
Writer = Callable[[str, int], tuple[str, httpx.Response]]


def put_item(item: int) -> Writer:
    """The test apps' write: `PUT /item/<id>/<value>`, a new value each round."""

    def write(url: str, round_: int) -> tuple[str, httpx.Response]:
        new = f"value-{round_}-{uuid.uuid4().hex[:6]}"
        return new, httpx.put(
            f"{url}/item/{item}/{new}", timeout=10, headers={"Connection": "close"}
        )

    return write


def check_coherence(
    server: WebServer,
    read: str,
    write: Writer,
    rounds: int = 2,
    field: str = "value",
) -> dict[str, Any]:
    """The HTTP load loop: every worker answers the current value of *read* (a
    path; the value is its JSON's *field*), so its L1 holds it; one request
    writes a new value (*write*); after the write returned and the propagation
    window passed, every worker answers, and none the old value."""
    url = f"{server.url}{read}"
    current = _fetch(url, field).value
    figures: dict[str, Any] = {"stale_within_window": 0, "answers_after_window": 0}
    instances: dict[int, str] = {}
    for round_ in range(rounds):
        load_loop(
            url,
            each_answered(current, server.workers),
            f"every worker answers {current!r}",
            field,
        )
        new, reply = write(server.url, round_)
        assert reply.status_code == 200, reply.text
        assert new != current
        settled = time.monotonic() + WINDOW  # the write has returned: the window starts
        answers = load_loop(
            url,
            each_answered_after(settled, server.workers),
            "every worker answers after the propagation window",
            field,
        )
        late = [a for a in answers if a.start >= settled]
        stale = [a for a in late if a.value == current]
        assert not stale, (
            f"{len(stale)} of {len(late)} answers after the window were the old value "
            f"{current!r}, from pids {sorted({a.pid for a in stale})}; the writer was "
            f"{_worker(reply)[0]}"
        )
        figures["stale_within_window"] += sum(a.value == current for a in answers) - len(stale)
        figures["answers_after_window"] += len(late)
        instances.update((a.pid, a.instance) for a in answers)
        current = new
    # Every worker is an instance of its own.
    assert len(set(instances.values())) == len(instances) == server.workers, instances
    figures["instances"] = instances
    return figures


def _live_instances(server: RedisServer, env: dict[str, str]) -> list[bytes]:
    """The instances of the app's namespace that report themselves live."""
    with redis.Redis.from_url(server.url) as raw:
        prefix = Layout(env["TWOTIER_NAMESPACE"]).heartbeat_prefix
        return sorted(raw.scan_iter(match=glob_escape(prefix) + "*"))


def _twotier_lines(server: WebServer) -> list[str]:
    return [line for line in server.output().splitlines() if "twotier[" in line]


FLASK, FASTAPI = "integration.apps.web_flask:app", "integration.apps.web_fastapi:app"
DJANGO = "integration.apps.web_django:application"
GTHREAD = ["-k", "gthread", "--threads", "4"]
UVICORN = ["-k", "uvicorn_worker.UvicornWorker"]
GEVENT = ["-k", "gevent", "--worker-connections", "100"]
WEB_MODELS: dict[str, tuple[str, list[str], int]] = {
    # id: (app, gunicorn arguments, workers); with --preload, the master uses
    # the cache at import (APP_USE_AT_IMPORT), before it forks the workers
    "flask-sync": (FLASK, ["-k", "sync"], 3),
    "flask-async-views-gthread": (FLASK, [*GTHREAD, "--preload"], 2),
    "flask-sync-preload": (FLASK, ["-k", "sync", "--preload"], 3),
    "flask-gthread": (FLASK, GTHREAD, 2),
    "flask-gthread-preload": (FLASK, [*GTHREAD, "--preload"], 2),
    "fastapi-uvicorn-preload": (FASTAPI, [*UVICORN, "--preload"], 3),
    "flask-gevent": (FLASK, GEVENT, 2),
    "flask-gevent-preload": (FLASK, [*GEVENT, "--preload"], 2),
    "django-sync": (DJANGO, ["-k", "sync"], 3),
    "django-sync-preload": (DJANGO, ["-k", "sync", "--preload"], 3),
    "django-gthread": (DJANGO, GTHREAD, 2),
    "django-gthread-preload": (DJANGO, [*GTHREAD, "--preload"], 2),
}


@pytest.mark.parametrize("model", list(WEB_MODELS))
def test_prefork_web_servers_stay_coherent(
    shared_server: RedisServer, model: str, tmp_path: Path
) -> None:
    """gunicorn with sync, gthread and uvicorn workers, with and without
    `--preload` (the app module, and its cache, imported — and used — in the
    master before it forks): Flask and FastAPI apps on the default cache
    (`from twotier import cache`), a Django app on a `TwoTierCache` of its own
    at module level. HTTP load loops check that after a write returns, no
    worker answers the old value once the propagation window has passed.

    Before the fix, every `--preload` model failed: the workers shared the
    master's instance id, and each ignored the others' changes as its own.
    """
    app, args, workers = WEB_MODELS[model]
    env = app_env(shared_server, APP_DB=str(tmp_path / "items.sqlite3"))
    if "--preload" in args:
        env["APP_USE_AT_IMPORT"] = "1"
    with _items_created(env):
        pass
    read = "/async/item" if "async-views" in model else "/item"
    with gunicorn(app, args, env, tmp_path, workers) as server:
        figures = check_coherence(server, f"{read}/1", put_item(1))
        if read == "/async/item":
            # Each request brought its own event loop, and the cache kept its L1:
            # a cache taken over by each request's loop would start empty each time.
            hits = httpx.get(f"{server.url}{read}/1", timeout=10).json()["l1_hits"]
            assert hits > 0
        assert len(_live_instances(shared_server, env)) >= workers  # each reports itself
    _check_stopped(shared_server, env, server, figures, forked="--preload" in args)
    print(
        f"\n{model}: {figures['answers_after_window']} answers after the window, none stale; "
        f"{figures['stale_within_window']} old answers within it; workers {figures['instances']}"
    )


def _check_stopped(
    shared_server: RedisServer,
    env: dict[str, str],
    server: WebServer,
    figures: dict[str, Any],
    forked: bool,
) -> None:
    """After the server stopped: no instance left live, and (for forked workers)
    each worker logged its fork, with its pid and its own instance."""
    # Stopped as a deployment stops it (SIGTERM): every worker closed its cache
    # (atexit, or the app's lifespan), so none is still listed as live
    # (`twotier stats`; a heartbeat left behind would linger for 15 s).
    assert _live_instances(shared_server, env) == [], server.output()[-3000:]
    if not forked:
        return
    # docs/deployment.md's logging set-up (gunicorn's `logconfig_dict`, or
    # Django's `LOGGING`, whose format differs): twotier's records, with pid and instance.
    lines = _twotier_lines(server)
    forked_lines = [line for line in lines if "a forked child" in line and "INFO" in line]
    for pid, instance in figures["instances"].items():
        assert any(
            f"[{pid}]" in line and f"twotier[{instance}/cache]" in line for line in forked_lines
        ), (pid, instance, lines)


@contextlib.contextmanager
def _items_created(env: dict[str, str]) -> Iterator[None]:
    previous = os.environ.get("APP_DB")
    os.environ["APP_DB"] = env["APP_DB"]
    try:
        items.create({0: "zero", 1: "initial", 2: "initial"})
        yield
    finally:
        if previous is None:
            del os.environ["APP_DB"]
        else:
            os.environ["APP_DB"] = previous


# -- the example ERP service under gunicorn ---------------------------------------------------

ERP = "integration.apps.erp_gunicorn:app"
ERP_WORKERS = 3
CHARGE = 7  # any of the demo data's 200 charges


def put_amount(charge: int) -> Writer:
    """The ERP service's write: `PUT /charges/<id>` with a new amount (well above
    the demo data's, so never the old one); the value is the amount as the
    service renders it."""

    def write(url: str, round_: int) -> tuple[str, httpx.Response]:
        amount = f"{10_000 + 1_000 * round_}.{uuid.uuid4().int % 100:02d}"
        reply = httpx.put(
            f"{url}/charges/{charge}",
            json={"amount": amount},
            timeout=10,
            headers={"Connection": "close"},
        )
        new = str(reply.json()["amount"]) if reply.status_code == 200 else amount
        return new, reply

    return write


def test_the_erp_service_under_gunicorn_uvicorn_workers_preload_stays_coherent(
    shared_server: RedisServer, tmp_path: Path
) -> None:
    """`compose/erp` itself (docs/erp-example.md) under `gunicorn -k
    uvicorn_worker.UvicornWorker -w 3 --preload`, on a SQLite file (aiosqlite):
    the master imports the service and its module-level `from twotier import
    cache`, then forks three workers, whose lifespans start the cache. A `PUT
    /charges/<id>` through one worker; once it returned and the propagation
    window passed, no worker answers the old amount from `GET /charges/<id>`.

    This is the issue's finding: before the fix the workers shared the
    master's instance id, and the service answered the old amount 128 times
    out of 200 reads after a PUT."""
    env = app_env(shared_server, DATABASE_URL=f"sqlite:///{tmp_path / 'erp.sqlite3'}")
    # The schema and the demo data first, once (a deployment's migration step),
    # so that the workers' start-up does not race on creating them.
    seeded = subprocess.run(
        [sys.executable, "-c", "import asyncio, erp.db; asyncio.run(erp.db.init_database())"],
        env={**env, "PYTHONPATH": os.pathsep.join([str(ROOT / "compose"), env["PYTHONPATH"]])},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert seeded.returncode == 0, seeded.stderr
    args = [*UVICORN, "--preload", "--pythonpath", str(ROOT / "compose")]
    read = f"/charges/{CHARGE}"
    with gunicorn(ERP, args, env, tmp_path, ERP_WORKERS, ready=read) as server:
        figures = check_coherence(server, read, put_amount(CHARGE), rounds=3, field="amount")
        assert len(_live_instances(shared_server, env)) >= ERP_WORKERS
    _check_stopped(shared_server, env, server, figures, forked=True)
    print(
        f"\nerp-uvicorn-preload: {figures['answers_after_window']} answers after the window, "
        f"none stale; {figures['stale_within_window']} old answers within it; "
        f"workers {figures['instances']}"
    )


# -- Celery ------------------------------------------------------------------------------


@contextlib.contextmanager
def celery_worker(env: dict[str, str], workdir: Path, *args: str) -> Iterator[Celery]:
    """A Celery worker of `integration/apps/celery_app.py` (prefork pool), and a
    client app that sends it tasks by name."""
    log = workdir / "celery.log"
    command = [
        sys.executable, "-m", "celery", "-A", "integration.apps.celery_app", "worker",
        "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
        *args,
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
    client = Celery("client", broker=env["APP_BROKER"], backend=env["APP_BACKEND"])
    try:
        yield client
    finally:
        process.send_signal(signal.SIGTERM)  # a warm shutdown
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        client.close()
        if process.returncode not in (0, -signal.SIGTERM):
            raise AssertionError(log.read_text(errors="replace")[-3000:])


def run_task(client: Celery, name: str, *args: Any) -> dict[str, Any]:
    result = client.send_task(f"integration.apps.celery_app.{name}", args=args)
    reply: dict[str, Any] = result.get(timeout=HTTP_DEADLINE)
    return reply


def test_celery_prefork_task_invalidates_and_the_web_workers_see_it(
    shared_server: RedisServer, tmp_path: Path
) -> None:
    """A Celery worker (prefork pool, each child replaced after two tasks) whose
    task changes an item and invalidates its tag; the web process (gunicorn
    sync workers with `--preload`) must not answer the old value once the
    propagation window has passed. The pool's children, forked from a main
    process that used the cache, are instances of their own."""
    base = shared_server.url.rsplit("/", 1)[0]
    env = app_env(
        shared_server,
        APP_DB=str(tmp_path / "items.sqlite3"),
        APP_BROKER=f"{base}/1",  # the test's own server: the broker and results
        APP_BACKEND=f"{base}/2",  # on other databases than the cache's (0)
        APP_USE_AT_IMPORT="1",
    )
    with _items_created(env):
        pass
    url = "/item/1"
    with (
        gunicorn("integration.apps.web_flask:app", ["--preload"], env, tmp_path, 2) as web,
        celery_worker(env, tmp_path, "--pool", "prefork", "--concurrency", "2",
                      "--max-tasks-per-child", "2") as celery,
    ):  # fmt: skip
        children: dict[int, str] = {}
        current = _fetch(web.url + url).value
        for round_ in range(3):
            load_loop(
                web.url + url, each_answered(current, 2), f"every web worker answers {current!r}"
            )
            assert run_task(celery, "read_item", 1)["value"] == current
            new = f"from-celery-{round_}"
            changed = run_task(celery, "change_item", 1, new)  # returns once Redis has it
            children[changed["pid"]] = changed["instance"]
            settled = time.monotonic() + WINDOW
            answers = load_loop(
                web.url + url,
                each_answered_after(settled, 2),
                "every web worker answers after the propagation window",
            )
            stale = [a for a in answers if a.start >= settled and a.value == current]
            assert not stale, f"web workers {sorted({a.pid for a in stale})} kept {current!r}"
            read = run_task(celery, "read_item", 1)
            assert read["value"] == new, read  # a pool child holding the old value dropped it
            children[read["pid"]] = read["instance"]
            current = new
    # Each pool child its own instance (a pid never shares an id with another).
    assert len(set(children.values())) == len(children), children
