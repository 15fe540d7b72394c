"""Weighted lists (Accept, Accept-Language) as RFC 9110 section 12.4.2 writes them."""

from __future__ import annotations

import pytest

from gateway.edge.weights import MOST_CHARS, MOST_MEMBERS, weighed


@pytest.mark.parametrize(
    ("header", "read"),
    [
        (None, []),
        ("", []),
        ("es-MX, es;q=0.9, en;Q=0.5", [("es-MX", 1.0), ("es", 0.9), ("en", 0.5)]),
        ("text/html;level=1;q=0.25", [("text/html", 0.25)]),
        ("a ; q = 0.5", [("a", 0.5)]),
        ("a;q=1.000, b;q=0.001, c;q=0", [("a", 1.0), ("b", 0.001), ("c", 0.0)]),
        # Not a weight: read as 0, not wanted.
        ("a;q=1.001", [("a", 0.0)]),
        ("a;q=2", [("a", 0.0)]),
        ("a;q=inf", [("a", 0.0)]),
        ("a;q=nan", [("a", 0.0)]),
        ("a;q=1e0", [("a", 0.0)]),
        ("a;q=-0", [("a", 0.0)]),
        ("a;q=0.1234", [("a", 0.0)]),
        ("a;q=", [("a", 0.0)]),
        (";;;,,,", []),
    ],
)
def test_weights(header: str | None, read: list[tuple[str, float]]) -> None:
    assert weighed(header) == read


def test_only_the_first_members_are_read() -> None:
    assert weighed("a," * 1000) == [("a", 1.0)] * MOST_MEMBERS
    # A member cut where the part read ends is not read: its weight may be cut off.
    head = "x" * (MOST_CHARS - len(",text/html")) + ","
    assert weighed(head + "text/html;q=0.1") == [(head[:-1], 1.0)]  # not text/html at 1
    assert weighed("y" * 100_000) == []
