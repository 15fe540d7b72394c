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

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class PolicyError(Exception):
    """A policy that must not be served; `issues` lists every problem found."""

    def __init__(self, issues: list[Issue]) -> None:
        super().__init__("\n".join(str(i) for i in issues))
        self.issues = issues


@dataclass(slots=True)
class Document:
    """Plain data from one YAML file plus the line of each location in it."""

    file: str
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)

    def line_of(self, loc: Loc) -> int:
        # Fall back to the nearest enclosing location that has a line.
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get((), 0)

    def issue(self, loc: Loc, message: str) -> Issue:
        return Issue(self.file, self.line_of(loc), dotted(loc), message)


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
        line = mark.line + 1 if mark else 0
        raise PolicyError([Issue(file, line, "", f"YAML syntax: {exc.problem}")]) from None
    except yaml.YAMLError as exc:
        raise PolicyError([Issue(file, 0, "", f"YAML: {exc}")]) from None
    finally:
        loader.dispose()


def _convert(loader: yaml.SafeLoader, node: yaml.Node, loc: Loc, doc: Document) -> Any:
    doc.lines.setdefault(loc, node.start_mark.line + 1)
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
            out[key] = _convert(loader, value_node, (*loc, key), doc)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(loader, item, (*loc, i), doc) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)
