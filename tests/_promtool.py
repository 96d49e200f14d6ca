"""promtool (Debian's `prometheus` package, installed by .ci/run) for the tests.

A missing promtool fails the tests that need it, never skips them: the alert
rules and the exporter's output would otherwise go unchecked in silence.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "compose" / "prometheus"
DASHBOARD = ROOT / "compose" / "grafana" / "dashboards" / "twotier.json"


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found: install Debian's prometheus package "
            "(apt-get install -y prometheus; .ci/run does it)"
        )
    return subprocess.run(
        [path, *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        cwd=PROMETHEUS,
        timeout=60,
        check=False,
    )


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan", "le"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (a small tokenizer, enough for
    our rules and dashboard: strings, label matchers, ranges and groupings are
    stripped first; identifiers not followed by "(" are metric names)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"label_values\(\s*([a-zA-Z_:][\w:]*)\s*,\s*\w+\s*\)", r" \1 ", text)
    names = {m for m in _NAME.findall(text) if m.lower() not in _KEYWORDS}
    return {n for n in names if not re.fullmatch(r"\d+(?:[eE]\d+)?", n)}
