"""Route path patterns: syntax, compilation to a regex, and shadowing.

A pattern is a path whose segments may be:
- `**`        any number of segments, including none (only as a whole segment);
- `*`         exactly one non-empty segment;
- `{name}`    exactly one non-empty segment, named (the name is documentation
              today and a capture for later price rules);
- literal text, which may itself contain `*` or `{name}` (`{dataset}.csv`,
  `*.pdf`): those match within the segment, never across a `/`.

Patterns match canonical paths (see `gateway.paths`), so `..`, `//` and
percent-escapes never reach them. A trailing `/` is significant: `/a/` and
`/a` are different resources, as they are to most upstreams.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

_NAME = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PIECE = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}|\*")
_BAD = re.compile(r"[\x00-\x20\x7f\\?#%;]")


class PatternError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Segment:
    kind: str  # "deep" (**), "any" (* or {name}), "glob" (wildcards inside), "lit"
    text: str  # literal text, or the glob's source
    regex: str  # regex for this one segment (without separators)


@dataclass(frozen=True, slots=True)
class Pattern:
    source: str
    segments: tuple[Segment, ...]
    regex: re.Pattern[str]
    names: tuple[str, ...]


def compile_pattern(source: str, *, case_sensitive: bool = True) -> Pattern:
    if not source.startswith("/"):
        raise PatternError("a path pattern must start with '/'")
    if bad := _BAD.search(source):
        raise PatternError(f"character {bad.group()!r} is not allowed in a path pattern")
    parts = source.split("/")[1:]
    if "" in parts[:-1]:
        raise PatternError("empty segment ('//') in path pattern")
    segments = tuple(_segment(p) for p in parts)
    names = tuple(n for p in parts for n in _NAME.findall(p))
    if len(set(names)) != len(names):
        raise PatternError("a {name} is used twice in one pattern")
    if any(s.text in (".", "..") for s in segments if s.kind == "lit"):
        raise PatternError("'.' and '..' segments never match a canonical path")
    # re.ASCII: ignore case for A-Z only, as the mount is matched.
    flags = 0 if case_sensitive else re.IGNORECASE | re.ASCII
    return Pattern(source, segments, re.compile(_to_regex(segments), flags), names)


def _segment(part: str) -> Segment:
    if part == "**":
        return Segment("deep", part, "")
    if "**" in part:
        raise PatternError("'**' must be a whole segment, as in /reports/**")
    if part == "*" or _NAME.fullmatch(part):
        return Segment("any", part, "[^/]+")
    if "{" in _PIECE.sub("", part) or "}" in _PIECE.sub("", part):
        raise PatternError(f"malformed {{name}} in segment {part!r}")
    if _PIECE.search(part):
        regex = "".join(
            ("[^/]*" if piece == "*" else "[^/]+") if _PIECE.fullmatch(piece) else re.escape(piece)
            for piece in re.split(f"({_PIECE.pattern})", part)
            if piece
        )
        return Segment("glob", part, regex)
    return Segment("lit", part, re.escape(part))


def _to_regex(segments: tuple[Segment, ...]) -> str:
    out = ""
    for seg in segments:
        if seg.kind == "deep":
            out += "(?:/.*)?"
        else:
            out += "/" + seg.regex
    return out or "/"


def shadows(earlier: Pattern, later: Pattern, *, case_sensitive: bool = True) -> bool:
    """True when every path `later` matches is matched by `earlier` too.

    Conservative: it may miss some shadowing, but never reports a route as
    unreachable when some path could still reach it.
    """
    a, b = earlier.segments, later.segments

    @cache
    def covers(i: int, j: int) -> bool:
        if i == len(a):
            return j == len(b)
        if a[i].kind == "deep":
            return covers(i + 1, j) or (j < len(b) and covers(i, j + 1))
        if j == len(b) or b[j].kind == "deep":
            return False
        return _segment_covers(a[i], b[j], case_sensitive) and covers(i + 1, j + 1)

    return covers(0, 0)


def _segment_covers(a: Segment, b: Segment, case_sensitive: bool) -> bool:
    if a.kind == "any":
        return b.kind != "lit" or b.text != ""
    if b.kind == "lit":
        flags = 0 if case_sensitive else re.IGNORECASE | re.ASCII
        return re.fullmatch(a.regex, b.text, flags) is not None
    return a.kind == b.kind and (
        a.text == b.text if case_sensitive else a.text.lower() == b.text.lower()
    )
