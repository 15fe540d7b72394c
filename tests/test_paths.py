"""Canonical request targets: one normal form, ambiguous input refused."""

from __future__ import annotations

import random
import re
from urllib.parse import unquote

import pytest
from yarl import URL

from gateway.edge.paths import PathError, canonicalize


@pytest.mark.parametrize(
    ("raw", "path", "forward"),
    [
        ("/paid", "/paid", "/paid"),
        ("/free/../paid", "/paid", "/paid"),
        ("/free/%2e%2e/paid", "/paid", "/paid"),
        ("/free/%2E%2E/paid", "/paid", "/paid"),
        ("/free/.%2e/paid", "/paid", "/paid"),
        ("//paid", "/paid", "/paid"),
        ("/a//b///c", "/a/b/c", "/a/b/c"),
        ("/./paid", "/paid", "/paid"),
        ("/paid/", "/paid/", "/paid/"),
        ("/a/b/..", "/a/", "/a/"),
        ("/a/.", "/a/", "/a/"),
        ("/a/..", "/", "/"),
        ("/", "/", "/"),
        ("/PAID", "/PAID", "/PAID"),
        ("/%70aid", "/paid", "/paid"),  # needless escapes are decoded away
        ("/a%20b", "/a b", "/a%20b"),
        ("/caf%c3%a9", "/café", "/caf%C3%A9"),  # escapes normalised to upper case
        ("/a%25b", "/a%b", "/a%25b"),  # a literal '%' stays literal
        ("/a%3Fb", "/a?b", "/a%3Fb"),  # an encoded '?' is part of the path
        ("/a%23b", "/a#b", "/a%23b"),
        ("/.well-known/x", "/.well-known/x", "/.well-known/x"),
        ("/x?y=1&z=%2F..", "/x", "/x"),  # the query is not a path
    ],
)
def test_canonical_form(raw: str, path: str, forward: str) -> None:
    target = canonicalize(raw)
    assert (target.path, target.forward) == (path, forward)
    # The forwarded form decodes to exactly what was matched.
    assert unquote(target.forward) == target.path


def test_raw_utf8_octets_are_decoded() -> None:
    # aiohttp hands raw non-ASCII octets over as surrogate escapes.
    raw = "/caf\udcc3\udca9"
    target = canonicalize(raw)
    assert target.path == "/café"
    assert target.forward == "/caf%C3%A9"


def test_query_passes_through_untouched() -> None:
    target = canonicalize("/x/../y?a=%2F..&b=%zz")
    assert (target.path, target.query) == ("/y", "a=%2F..&b=%zz")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("/free/%2E%2E%2Fpaid", "encoded-slash"),
        ("/free%2fpaid", "encoded-slash"),
        ("/free%5cpaid", "backslash"),
        ("/free\\paid", "backslash"),
        ("/paid;x=1", "path-parameter"),
        ("/paid%3bx=1", "path-parameter"),
        ("/paid%00", "control-character"),
        ("/paid%0a", "control-character"),
        ("/paid%7f", "control-character"),
        ("/paid\x01", "control-character"),
        ("/%c3", "invalid-utf8"),
        ("/%ff%fe", "invalid-utf8"),
        ("/caf\udcc3", "invalid-utf8"),
        ("/a%zz", "invalid-percent-encoding"),
        ("/a% 1", "invalid-percent-encoding"),
        ("/a%+1", "invalid-percent-encoding"),
        ("/a%2", "invalid-percent-encoding"),
        ("/..", "escapes-root"),
        ("/a/../../b", "escapes-root"),
        ("/%2e%2e/etc/passwd", "escapes-root"),
        ("paid", "not-origin-form"),
        ("http://evil/paid", "not-origin-form"),
        ("*", "not-origin-form"),
        ("/a#frag", "fragment"),
        # '..' after '//': /1 here, /page/1 to RFC 3986 and WHATWG resolvers.
        ("/page//../1", "ambiguous-dot-segment"),
        ("/a//%2e%2e/b", "ambiguous-dot-segment"),
        ("/a/b///../../c", "ambiguous-dot-segment"),
        ("/archive/pages/\ud800", "invalid-utf8"),
    ],
)
def test_refused(raw: str, reason: str) -> None:
    with pytest.raises(PathError) as info:
        canonicalize(raw)
    assert info.value.reason == reason


def test_canonical_form_is_a_fixed_point() -> None:
    # Canonicalising the forwarded form again changes nothing: the upstream
    # and the policy can never disagree about which path this is.
    for raw in ["/a/./b/../c//d/", "/%41%42c", "/x y".replace(" ", "%20"), "/caf%C3%A9/", "/a%25"]:
        once = canonicalize(raw)
        twice = canonicalize(once.forward)
        assert (twice.path, twice.forward) == (once.path, once.forward)


def test_accepted_paths_mean_the_same_to_an_rfc_3986_resolver() -> None:
    # Whatever Farebox accepts, an upstream that resolves dot segments the
    # RFC 3986 / WHATWG way (yarl, Node's URL, Java's URI) reads as the same
    # path once repeated slashes are folded: no path means two things.
    rng = random.Random(3986)
    parts = ["a", "b", "", ".", "..", "%2e", "%2E%2e"]
    for _ in range(5000):
        raw = "/" + "/".join(rng.choice(parts) for _ in range(rng.randint(1, 7)))
        try:
            ours = canonicalize(raw).path
        except PathError:
            continue
        theirs = re.sub(
            "/+", "/", URL("http://h" + raw.replace("%2E", ".").replace("%2e", ".")).path
        )
        assert ours == theirs, (raw, ours, theirs)
