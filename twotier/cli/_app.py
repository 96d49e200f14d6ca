"""The ops commands: typer parses, `_ops`/`_doctor` act, rich renders (STYLE.md 16).

Every command takes `--url` / `--namespace` (defaults: `TWOTIER_REDIS_URL`,
`TWOTIER_NAMESPACE`, else `twotier`, the library's default namespace) and
`--json`, and exits with the codes of `_ops` (docs/operations.md). Errors are
one line on stderr (and `{"error": …, "exit_code": …}` on stdout with
`--json`), never a traceback.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from twotier import TwoTierCache, __version__

from . import _ops
from ._doctor import Check, run_doctor
from ._ops import CliError, Target

app = typer.Typer(
    name="twotier",
    help="twotier: a two-tier (L1 + Redis) coherent async cache — operations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Url = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="TWOTIER_REDIS_URL",
        show_default=False,
        help="Redis URL (default: $TWOTIER_REDIS_URL): redis://[user:pw@]host:6379/0 (a "
        "cluster node is detected), rediss://…, redis+cluster://…, "
        "redis+sentinel://host:port,host:port/service",
    ),
]
Namespace = Annotated[
    str,
    typer.Option("--namespace", "-n", envvar="TWOTIER_NAMESPACE", help="the cache's namespace"),
]
Json = Annotated[bool, typer.Option("--json", help="machine-readable output on stdout")]
Timeout = Annotated[
    float, typer.Option("--timeout", min=0.001, help="seconds for each Redis call and connect")
]
Force = Annotated[
    bool, typer.Option("--force", help="act even if the namespace was never used on this server")
]

STATUS_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}
#: The per-instance columns of `stats` and `top`: (heading, heartbeat field).
COLUMNS = (
    ("hits", "hits"),
    ("misses", "misses"),
    ("hit %", "hit_rate"),
    ("L1 entries", "entries"),
    ("L2 errors", "l2_errors"),
    ("resyncs", "resyncs"),
    ("queued", "queued_ops_pending"),
)


def _out() -> Console:
    # Made per call, so that the output goes where sys.stdout points now (tests).
    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:  # a pipe or a file: no width to fit, 80 columns cramp tables
        console.width = max(console.width, 140)
    return console


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _emit_json(data: object) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _run(coroutine: Coroutine[Any, Any, int], as_json: bool) -> None:
    """Run a command; a `CliError` becomes its message and exit code."""
    try:
        code = _ops.run(coroutine)
    except CliError as exc:
        if as_json:
            _emit_json({"error": exc.message, "exit_code": exc.code})
        _err().print(f"[bold red]error:[/] {escape(exc.message)}", markup=True)
        raise typer.Exit(exc.code) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    raise typer.Exit(code)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _stats_table(namespace: str, reports: list[dict[str, Any]], total: dict[str, Any]) -> Table:
    table = Table(title=f"namespace {namespace!r}: {len(reports)} live instance(s)")
    table.add_column("instance", no_wrap=True)
    table.add_column("host:pid", no_wrap=True)
    table.add_column("Redis")
    for heading, _ in COLUMNS:
        table.add_column(heading, justify="right")
    table.add_column("age s", justify="right")
    for report in reports:
        up = report.get("redis_available")
        state = "[green]up[/]" if up is True else f"[red]{report.get('breaker_state', 'down')}[/]"
        table.add_row(
            str(report["instance"]),
            f"{report.get('host', '?')}:{report.get('pid', '?')}",
            state,
            *(_cell(report.get(field)) for _, field in COLUMNS),
            _cell(report.get("age")),
            style="red" if "error" in report else None,
        )
    table.add_section()
    table.add_row(
        "[bold]total[/]",
        "",
        f"{total['instances_connected']}/{total['instances']} up",
        *(_cell(total.get(field)) for _, field in COLUMNS),
        "",
    )
    return table


async def _read_stats(target: Target, force: bool) -> dict[str, Any]:
    server = await _ops.checked_client(target, force)
    try:
        reports = await _ops.heartbeats(server, target.namespace)
    finally:
        await server.aclose()
    return {
        "namespace": target.namespace,
        "instances": reports,
        "totals": _ops.totals(reports),
    }


@app.command()
def stats(
    url: Url = None,
    namespace: Namespace = "twotier",
    as_json: Json = False,
    timeout: Timeout = 2.0,
    force: Force = False,
) -> None:
    """Every live instance of the namespace (from their heartbeats) and the totals."""

    async def go() -> int:
        data = await _read_stats(Target(url, namespace, timeout), force)
        if as_json:
            _emit_json(data)
        else:
            _out().print(_stats_table(namespace, data["instances"], data["totals"]))
        return _ops.EXIT_OK

    _run(go(), as_json)


@app.command()
def top(
    url: Url = None,
    namespace: Namespace = "twotier",
    as_json: Json = False,
    timeout: Timeout = 2.0,
    force: Force = False,
    interval: Annotated[float, typer.Option(min=0.05, help="seconds between refreshes")] = 2.0,
    iterations: Annotated[
        int, typer.Option(min=0, help="stop after this many refreshes (0: until Ctrl-C)")
    ] = 0,
) -> None:
    """A live view of `stats`, refreshed every --interval seconds; Ctrl-C stops it.

    With --json, one JSON object a line per refresh.
    """
    target = Target(url, namespace, timeout)

    async def go() -> int:
        import asyncio

        data = await _read_stats(target, force)  # the namespace check, once
        done = 0
        live = None if as_json else Live(console=_out(), auto_refresh=False)
        try:
            if live is not None:
                live.start()
            while True:
                if as_json:
                    typer.echo(json.dumps({**data, "time": time.time()}, default=str))
                else:
                    assert live is not None
                    live.update(_stats_table(namespace, data["instances"], data["totals"]))
                    live.refresh()
                done += 1
                if iterations and done >= iterations:
                    return _ops.EXIT_OK
                await asyncio.sleep(interval)
                data = await _read_stats(target, force=True)
        # Ctrl-C is how top ends: asyncio.run cancels this task on SIGINT, and
        # re-raises KeyboardInterrupt (exit 130) only if the task let it through.
        except (KeyboardInterrupt, asyncio.CancelledError):
            return _ops.EXIT_OK
        finally:
            if live is not None:
                live.stop()

    _run(go(), as_json)


def _change(
    target: Target,
    force: bool,
    as_json: bool,
    action: Callable[[TwoTierCache], Coroutine[Any, Any, object]],
    summary: dict[str, Any],
    said: str,
) -> None:
    async def go() -> int:
        server = await _ops.checked_client(target, force)
        try:
            live = len(await _ops.heartbeats(server, target.namespace))
        finally:
            await server.aclose()
        await _ops.with_cache(target, action)
        if as_json:
            _emit_json({**summary, "namespace": target.namespace, "live_instances": live})
        else:
            _out().print(
                f"{said} in namespace {target.namespace!r} ({live} live instance(s))", markup=False
            )
        return _ops.EXIT_OK

    _run(go(), as_json)


Tags = Annotated[
    list[str], typer.Argument(metavar="TAG...", help="the tags to invalidate", show_default=False)
]
Keys = Annotated[
    list[str], typer.Argument(metavar="KEY...", help="the keys to delete", show_default=False)
]


def _change_names(
    target: Target,
    force: bool,
    as_json: bool,
    action: Callable[[TwoTierCache], Coroutine[Any, Any, object]],
    done: str,
    names: list[str],
    noun: str,
) -> None:
    """`_change` for a command on a list of names: "<done> N <noun>(s): a, b"."""
    said = f"{done} {len(names)} {noun}(s): {', '.join(names)}"
    _change(target, force, as_json, action, {done: names}, said)


@app.command()
def invalidate(
    tags: Tags,
    url: Url = None,
    namespace: Namespace = "twotier",
    as_json: Json = False,
    timeout: Timeout = 2.0,
    force: Force = False,
) -> None:
    """Invalidate TAG… on every instance (through a cache, as `invalidate_tags` does)."""

    async def action(cache: TwoTierCache) -> None:
        await cache.invalidate_tags(tags)

    target = Target(url, namespace, timeout)
    _change_names(target, force, as_json, action, "invalidated", tags, "tag")


@app.command()
def delete(
    keys: Keys,
    url: Url = None,
    namespace: Namespace = "twotier",
    as_json: Json = False,
    timeout: Timeout = 2.0,
    force: Force = False,
) -> None:
    """Delete KEY… from Redis and every instance's L1."""

    async def action(cache: TwoTierCache) -> None:
        for key in keys:
            await cache.delete(key)

    _change_names(Target(url, namespace, timeout), force, as_json, action, "deleted", keys, "key")


@app.command()
def clear(
    yes: Annotated[bool, typer.Option("--yes", help="really clear the whole namespace")] = False,
    url: Url = None,
    namespace: Namespace = "twotier",
    as_json: Json = False,
    timeout: Timeout = 2.0,
    force: Force = False,
) -> None:
    """Invalidate every entry of the namespace on every instance (needs --yes)."""
    if not yes:
        raise typer.BadParameter(
            f"clearing namespace {namespace!r} drops every entry on every instance; "
            "add --yes to do it",
            param_hint="--yes",
        )

    async def action(cache: TwoTierCache) -> None:
        await cache.clear()

    _change(Target(url, namespace, timeout), force, as_json, action, {"cleared": True}, "cleared")


@app.command()
def doctor(
    url: Url = None,
    namespace: Namespace = "twotier",
    as_json: Json = False,
    timeout: Timeout = 2.0,
    pings: Annotated[int, typer.Option(min=1, help="PINGs for the latency check")] = 20,
    strict: Annotated[bool, typer.Option("--strict", help="a warning fails too")] = False,
) -> None:
    """Check the server and the setup: version, topology, eviction policy, latency,
    pub/sub, ACL rights, the namespace's keys. Exits 1 when a check fails."""

    async def go() -> int:
        _ops.check_namespace(namespace)
        try:
            server = await _ops.connect(url, timeout)
        except CliError as exc:
            if exc.code != _ops.EXIT_UNREACHABLE:
                raise
            checks = [Check("connection", "fail", exc.message)]
            _show_checks(checks, as_json, printed=False)
            return exc.code
        where = _ops.redact(url or "")
        checks = [Check("connection", "ok", where)]
        console = _out()
        if not as_json:
            _print_check(console, checks[0])
        try:
            with Progress(
                SpinnerColumn(),
                TextColumn("counting the namespace's entries: {task.completed} keys"),
                console=_err(),
                transient=True,
                disable=as_json,
            ) as progress:
                task = progress.add_task("scan", total=None)
                checks += await run_doctor(
                    server,
                    namespace,
                    pings=pings,
                    seconds=timeout,
                    on_check=(lambda c: None) if as_json else (lambda c: _print_check(console, c)),
                    on_scan=lambda n: progress.update(task, completed=n),
                )
        finally:
            await server.aclose()
        _show_checks(checks, as_json, printed=True)
        failed = any(c.status == "fail" for c in checks) or (
            strict and any(c.status == "warn" for c in checks)
        )
        return _ops.EXIT_PROBLEM if failed else _ops.EXIT_OK

    _run(go(), as_json)


def _print_check(console: Console, check: Check) -> None:
    style = STATUS_STYLE[check.status]
    console.print(
        f"[{style}]{check.status:>4}[/]  [bold]{check.name:<17}[/] {escape(check.detail)}"
    )


def _show_checks(checks: list[Check], as_json: bool, printed: bool) -> None:
    counts = {s: sum(c.status == s for c in checks) for s in ("ok", "warn", "fail")}
    if as_json:
        _emit_json({"checks": [c.as_dict() for c in checks], "summary": counts})
        return
    console = _out()
    if not printed:
        for check in checks:
            _print_check(console, check)
    console.print(f"{counts['ok']} ok, {counts['warn']} warning(s), {counts['fail']} failure(s)")


@app.command()
def warmup(
    loader: Annotated[str, typer.Option("--loader", help="module:function, called with each key")],
    keys_file: Annotated[
        str, typer.Option("--keys", help="file with one key a line ('-': standard input)")
    ],
    url: Url = None,
    namespace: Namespace = "twotier",
    as_json: Json = False,
    timeout: Timeout = 2.0,
    force: Force = False,
    concurrency: Annotated[int, typer.Option(min=1, help="loader calls at once")] = 16,
    ttl: Annotated[float | None, typer.Option(help="seconds (default: the cache's)")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="a tag of every entry")] = None,
) -> None:
    """Run the loader over the keys of a file through `cache.warmup` (keys already
    cached are not reloaded). Exits 1 if the loader failed for any key."""
    target = Target(url, namespace, timeout)

    async def go() -> int:
        function = _ops.import_loader(loader)
        keys = _ops.read_keys(keys_file)
        server = await _ops.checked_client(target, force)
        await server.aclose()
        began = time.perf_counter()
        with Progress(
            TextColumn("warming up"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[filled]} filled"),
            TimeElapsedColumn(),
            console=_err(),
            disable=as_json,
        ) as progress:
            task = progress.add_task("warmup", total=len(keys), filled=0)

            async def action(cache: TwoTierCache) -> int:
                return await _ops.warmup(
                    cache,
                    keys,
                    function,
                    concurrency=concurrency,
                    ttl=ttl,
                    tags=tuple(tag or ()),
                    progress=lambda done, filled: progress.update(
                        task, completed=done, filled=filled
                    ),
                )

            filled, stats = await _ops.with_cache(target, action)
        result = {
            "namespace": namespace,
            "keys": len(keys),
            "filled": filled,
            "not_filled": len(keys) - filled,
            "load_errors": stats["load_errors"],
            # Redis refused or missed a batch's reads, leases or fills: the cache
            # then fills its own L1 alone, which ends with this process.
            "l2_errors": stats["l2_errors"],
            "seconds": round(time.perf_counter() - began, 3),
        }
        if as_json:
            _emit_json(result)
        else:
            _out().print(
                f"warmed up {filled} of {len(keys)} key(s) in {result['seconds']} s "
                f"({result['not_filled']} already cached or without a value, "
                f"{result['load_errors']} loader error(s))"
            )
        if stats["l2_errors"]:
            _err().print(
                f"[bold red]error:[/] Redis failed {stats['l2_errors']} time(s) during the "
                f"warmup ({escape(str(stats.get('last_error') or 'no reason given'))}): "
                "the keys of those batches were not stored in Redis",
                markup=True,
            )
        failed = stats["load_errors"] or stats["l2_errors"]
        return _ops.EXIT_PROBLEM if failed else _ops.EXIT_OK

    _run(go(), as_json)


# `demo` and `bench` are run by `twotier.cli.main` before this application is
# imported (they must work without typer and rich); they are here for --help
# and for callers of `app` itself.
_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command(context_settings=_PASS_THROUGH, add_help_option=False)
def demo(ctx: typer.Context) -> None:
    """Three cache instances in three processes on an embedded server."""
    from . import main

    raise typer.Exit(main(["demo", *ctx.args]))


@app.command(context_settings=_PASS_THROUGH, add_help_option=False)
def bench(ctx: typer.Context) -> None:
    """Benchmarks (see `twotier bench --help`)."""
    from . import main

    raise typer.Exit(main(["bench", *ctx.args]))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"twotier {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="print the version"),
    ] = False,
) -> None:
    """twotier: a two-tier (L1 + Redis) coherent async cache — operations."""


def run(argv: list[str]) -> int:
    """Run the application on *argv*; its exit code."""
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="twotier", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0
