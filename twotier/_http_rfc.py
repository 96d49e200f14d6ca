"""HTTP semantics of cached answers: validators, conditional requests, request
directives (RFC 9110 §8.8, §13.1.2; RFC 9111 §5.2.1). Pure functions over header
values, so the rules are tested without a server."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

#: One entity-tag of a list (RFC 9110 §8.8.3): an optional W/, then a quoted string
#: that may contain commas, so the list is not split on commas.
_ENTITY_TAG = re.compile(r'\s*(W/)?("[\x21\x23-\x7e\x80-\xff]*")\s*(?:,|$)')


def entity_tags(header_lines: Iterable[str]) -> tuple[bool, list[str]]:
    """(`*` given, the opaque tags) of every `If-None-Match` line of a request.

    A field sent on several lines is one list (RFC 9110 §5.3), so every line
    counts. Weak and strong tags compare alike (weak comparison, §8.8.3.2,
    required for `If-None-Match`). A malformed member ends that line's parse:
    nothing after it is trusted.
    """
    star, tags = False, []
    for line in header_lines:
        if line.strip() == "*":
            star = True
            continue
        pos = 0
        while pos < len(line):
            if not line[pos:].strip(" \t,"):
                break
            while line[pos] in " \t,":
                pos += 1
            match = _ENTITY_TAG.match(line, pos)
            if match is None:
                break
            tags.append(match.group(2))
            pos = match.end()
    return star, tags


def none_match(header_lines: Iterable[str], etag: str) -> bool:
    """Whether `If-None-Match` names the current representation (so: 304)."""
    star, tags = entity_tags(header_lines)
    opaque = etag.removeprefix("W/")
    return star or opaque in tags


def directives(header_lines: Iterable[str]) -> dict[str, str | None]:
    """The directives of `Cache-Control` lines, lower-cased names, unquoted values."""
    found: dict[str, str | None] = {}
    for line in header_lines:
        for part in line.split(","):
            name, _, value = part.strip().partition("=")
            if name:
                found.setdefault(name.lower(), value.strip().strip('"') if value else None)
    return found


def codings(accept_encoding: Iterable[str]) -> str:
    """The content codings a request accepts, normalised ("" for identity only).

    Whichever coding a compression middleware picks is a function of this set
    and the body, and the body is fixed per version of an entry; so an ETag
    computed over the version and this set is never shared by two codings of
    one body (RFC 9110 §8.8.3.3: a strong validator names one representation).
    """
    accepted = set()
    for line in accept_encoding:
        for part in line.split(","):
            coding, *params = (p.strip() for p in part.split(";"))
            coding = coding.lower()
            refused = any(
                p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in params
            )
            if coding and coding != "identity" and not refused:
                accepted.add(coding)
    return ",".join(sorted(accepted))


def etag_of(key: str, stamp: str, coding: str) -> str:
    """The strong ETag of one version of an entry in one content coding: a digest
    of its key, the stamp stored with it, and the accepted codings. Every
    instance computes the same one for the same version: all three come from
    the shared entry and the request."""
    digest = hashlib.sha256()
    for part in (key, stamp, coding):
        data = part.encode()
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return '"' + digest.hexdigest()[:32] + '"'


def merge_vary(existing: str | None, names: Iterable[str]) -> str:
    """`Vary` with *names* added to what is there, each once (case-insensitively)."""
    seen: dict[str, str] = {}
    for name in [*(existing or "").split(","), *names]:
        name = name.strip()
        if name and name.lower() not in seen:
            seen[name.lower()] = name
    if "*" in seen:
        return "*"
    return ", ".join(seen.values())
