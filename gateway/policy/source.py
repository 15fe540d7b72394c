"""YAML reading that remembers where every key and value came from.

PyYAML's plain `safe_load` forgets line numbers and silently keeps the last of
two duplicate keys; admins need both reported against the line they typed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem in a policy file, with the line an admin should look at."""

    file: str
    line: int  # 1-based; 0 when the problem is about the file as a whole
    key: str  # dotted location, e.g. "services.archive.routes[2].price"
    message: str
    column: int = 0  # 1-based; 0 when unknown

    def __str__(self) -> str:
        """FILE:LINE:COLUMN: key: message, the form editors jump to (GNU style)."""
        where = self.file
        if self.line:
            where += f":{self.line}" + (f":{self.column}" if self.column else "")
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class PolicyError(Exception):
    """A policy that must not be served; `issues` lists every problem found,
    in file and line order."""

    def __init__(self, issues: list[Issue]) -> None:
        issues = sorted(issues, key=lambda i: (i.file, i.line, i.column))  # stable
        super().__init__("\n".join(str(i) for i in issues))
        self.issues = issues


@dataclass(slots=True)
class Document:
    """Plain data from one YAML file plus the line of each location in it."""

    file: str
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)
    columns: dict[Loc, int] = field(default_factory=dict)

    def line_of(self, loc: Loc) -> int:
        return self._at(loc)[0]

    def _at(self, loc: Loc) -> tuple[int, int]:
        # Fall back to the nearest enclosing location that has a line.
        while loc:
            if loc in self.lines:
                return self.lines[loc], self.columns.get(loc, 0)
            loc = loc[:-1]
        return self.lines.get((), 0), self.columns.get((), 0)

    def issue(self, loc: Loc, message: str) -> Issue:
        line, column = self._at(loc)
        return Issue(self.file, line, dotted(loc), message, column)


def dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse(file: str, text: str) -> Document:
    """Parse YAML text; raise PolicyError on syntax errors or duplicate keys."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        doc = Document(file, None)
        if node is not None:
            doc.data = _convert(loader, node, (), doc)
        return doc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        message = f"YAML syntax: {_plain(exc)}"
        raise PolicyError([Issue(file, line, "", message, column)]) from None
    except yaml.YAMLError as exc:
        raise PolicyError([Issue(file, 0, "", f"YAML: {exc}")]) from None
    finally:
        loader.dispose()


# PyYAML's words for its commonest errors, and what an admin would call them.
_PLAIN = (
    ("expected <block end>, but found", "this line's indentation does not line up with the "
     "lines above it (indent with spaces, the same number for keys of one mapping)"),
    ("mapping values are not allowed here", "a ':' where a value was expected (quote a value "
     "that contains ': ', or check the indentation)"),
    ("found character '\\t' that cannot start any token", "a tab character: indent with "
     "spaces"),
    ("could not find expected ':'", "a key without ':' after it"),
    ("found unexpected end of stream", "the file ends inside a quoted string or a list"),
    ("found undefined alias", "an alias (*name) with no anchor (&name) before it"),
)  # fmt: skip


def _plain(exc: yaml.MarkedYAMLError) -> str:
    """The error in an admin's words where PyYAML's are cryptic, else PyYAML's."""
    problem = str(exc.problem or exc)
    for theirs, ours in _PLAIN:
        if problem.startswith(theirs):
            return ours
    return problem


def _convert(loader: yaml.SafeLoader, node: yaml.Node, loc: Loc, doc: Document) -> Any:
    doc.lines.setdefault(loc, node.start_mark.line + 1)
    doc.columns.setdefault(loc, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves YAML merge keys (<<: *defaults)
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                raise PolicyError([Issue(doc.file, line, dotted(loc), f"key {key!r} is not text")])
            if key in out:
                first = doc.lines[(*loc, key)]
                message = f"duplicate key {key!r} (first at line {first})"
                raise PolicyError([Issue(doc.file, line, dotted(loc), message)])
            # An error about an entry points at its key, the line admins scan for.
            doc.lines[(*loc, key)] = line
            doc.columns[(*loc, key)] = key_node.start_mark.column + 1
            out[key] = _convert(loader, value_node, (*loc, key), doc)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(loader, item, (*loc, i), doc) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)
