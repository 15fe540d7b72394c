"""Policy files: parsing, strict validation with file:line, matching."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from gateway.edge.paths import canonicalize
from gateway.policy import Match, NoMatch, PolicyError, load_policy, parse_duration
from gateway.policy.patterns import PatternError, compile_pattern, shadows

GOOD = """\
services:
  archive:
    description: County archive
    upstream: http://127.0.0.1:9001/api
    mount: /archive
    routes:
      - path: /search
        price: free
      - path: /records/{id}
        methods: [GET]
        price: 25
        grant: {lasts: 24h, covers: resource}
      - path: /records/{id}
        methods: [delete]
        price: 1000
      - path: /datasets/**
        price: 500
        grant: {lasts: 1d, covers: route}
      - path: /files/*.pdf
        price: 3
  catchall:
    upstream: http://127.0.0.1:9002
    routes:
      - path: /**
        methods: "*"
        price: free
  vhost:
    upstream: http://127.0.0.1:9003
    host: Data.Example.gov
    case_sensitive: false
    routes:
      - path: /Paid
        price: 7
      - path: /**
        price: free
"""


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def issues_of(path: Path) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    return [str(i) for i in info.value.issues]


def match(policy, path: str, method: str = "GET", host: str | None = "gw.local:8402"):
    return policy.match(host, canonicalize(path), method)


def test_good_policy_loads_and_matches(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, GOOD))
    m = match(policy, "/archive/records/42?full=1")
    assert isinstance(m, Match)
    assert (m.service.name, m.route.route.price.satoshis) == ("archive", 25)
    assert m.upstream_url == "http://127.0.0.1:9001/api/records/42?full=1"
    assert m.scope == "/archive/records/42"
    assert m.route.route.effective_grant.lasts == 86400

    m = match(policy, "/archive/datasets/air/2024.csv")
    assert m.scope == "/archive/datasets/**"  # a route grant covers the whole pattern
    assert match(policy, "/archive/datasets").route.route.price.satoshis == 500

    assert match(policy, "/archive/records/42", "DELETE").route.route.price.satoshis == 1000
    assert match(policy, "/archive/search").route.route.price.free
    assert match(policy, "/archive/files/a.pdf").route.route.price.satoshis == 3


def test_first_match_wins_and_method_mismatch_gives_allowed(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, GOOD))
    m = match(policy, "/archive/records/42", "POST")
    assert m == NoMatch(("GET", "DELETE"))
    assert match(policy, "/archive/nothing/here") == NoMatch(())


def test_longest_mount_wins_then_catchall(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, GOOD))
    m = match(policy, "/elsewhere/x", "PATCH")
    assert m.service.name == "catchall"
    assert m.upstream_url == "http://127.0.0.1:9002/elsewhere/x"
    # "/archived" is not under the mount "/archive".
    assert match(policy, "/archived").service.name == "catchall"


def test_host_bound_service_and_case_insensitivity(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, GOOD))
    m = match(policy, "/PAID", host="data.example.GOV:443")
    assert (m.service.name, m.route.route.price.satoshis) == ("vhost", 7)
    assert m.upstream_url == "http://127.0.0.1:9003/PAID"  # forwarded as asked
    assert match(policy, "/paid", host="other.gov").service.name == "catchall"


def test_case_sensitive_policy_does_not_match_other_case(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, GOOD))
    m = match(policy, "/ARCHIVE/records/42")
    # Not the priced route: it falls to the catch-all, and is forwarded
    # exactly as matched, never as the lower-case priced path.
    assert m.service.name == "catchall"
    assert m.upstream_url.endswith("/ARCHIVE/records/42")


def test_trailing_slash_is_a_different_resource(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, GOOD))
    # The mount claims the path, no archive route matches it: no fall-through.
    assert match(policy, "/archive/records/42/") == NoMatch(())


def test_case_insensitive_mount(tmp_path: Path) -> None:
    text = GOOD.replace("    mount: /archive\n", "    mount: /Archive\n    case_sensitive: false\n")
    policy = load_policy(write(tmp_path, text))
    for path in ("/archive/records/1", "/ARCHIVE/RECORDS/1"):
        m = match(policy, path)
        assert (m.service.name, m.route.route.price.satoshis) == ("archive", 25), path


def test_unmatched_default_and_setting(tmp_path: Path) -> None:
    text = """\
    services:
      a:
        upstream: http://127.0.0.1:1
        routes: [{path: /x, price: free}]
    """
    assert load_policy(write(tmp_path, text)).unmatched == 404
    assert load_policy(write(tmp_path, text + "unmatched: 410\n")).unmatched == 410


def test_directory_of_files_is_merged_in_name_order(tmp_path: Path) -> None:
    write(
        tmp_path,
        "services:\n  b:\n    upstream: http://h:1\n    mount: /b\n    routes: [{path: /, price: 2}]\n",
        "b.yaml",
    )
    write(
        tmp_path,
        "services:\n  a:\n    upstream: http://h:1\n    mount: /a\n    routes: [{path: /, price: 1}]\n",
        "a.yml",
    )
    (tmp_path / "notes.txt").write_text("not a policy")
    policy = load_policy(tmp_path)
    assert [Path(s).name for s in policy.sources] == ["a.yml", "b.yaml"]
    assert match(policy, "/b/").route.route.price.satoshis == 2


def test_version_changes_with_content(tmp_path: Path) -> None:
    p = write(tmp_path, GOOD)
    v1 = load_policy(p).version
    assert load_policy(p).version == v1
    p.write_text(GOOD.replace("price: 25", "price: 26"))
    assert load_policy(p).version != v1


# --- validation: every error names file, line and key ---------------------------------


@pytest.mark.parametrize(
    ("snippet", "line", "expected"),
    [
        (
            "      - path: /x\n        pricee: 5\n",
            9,
            "routes[1].pricee: unknown key 'pricee' (did you mean 'price'?)",
        ),
        (
            "      - path: /x\n        price: -5\n",
            9,
            "routes[1].price: price must be at least 1 satoshi",
        ),
        ("      - path: /x\n        price: 0\n", 9, "write 'free' for no charge"),
        (
            "      - path: /x\n        price: 1.5\n",
            9,
            "routes[1].price: price must be a whole number of satoshis",
        ),
        (
            "      - path: /x\n        price: cheap\n",
            9,
            "price must be 'free', a whole number of satoshis, or {usd_cents: N}",
        ),
        (
            "      - path: /x\n        price: 3\n        grant: {lasts: 10 minutes}\n",
            10,
            "grant.lasts: '10 minutes' is not a duration",
        ),
        (
            "      - path: /x\n        price: 3\n        grant: {lasts: 0s}\n",
            10,
            "longer than zero",
        ),
        (
            "      - path: /x\n        price: 3\n        grant: {covers: everything}\n",
            10,
            "grant.covers: Input should be 'resource' or 'route'",
        ),
        (
            "      - path: /x/**y\n        price: 3\n",
            8,
            "routes[1].path: bad path pattern '/x/**y'",
        ),
        ("      - path: x\n        price: 3\n", 8, "must start with '/'"),
        ("      - path: /a/{id}/{id}\n        price: 3\n", 8, "used twice"),
        (
            "      - path: /x\n        methods: [GET, 'BAD METHOD']\n        price: 3\n",
            9,
            "is not an HTTP method",
        ),
        ("      - path: /x\n", 8, "routes[1].price: required key is missing"),
        (
            "      - path: /free/**\n        price: free\n      - path: /free/secret\n        price: 100\n",
            10,
            "unreachable route",
        ),
        ("      - path: /first\n        price: 100\n", 8, "duplicate route"),
        (
            "      - path: /y\n        price: free\n        grant: {lasts: 1h}\n",
            10,
            "a free route has nothing to grant",
        ),
    ],
)
def test_route_errors_name_file_line_and_key(
    tmp_path: Path, snippet: str, line: int, expected: str
) -> None:
    text = (
        "# a comment line\n"
        "services:\n"
        "  shop:\n"
        "    upstream: http://127.0.0.1:9\n"
        "    routes:\n"
        "      - path: /first\n"
        "        price: 10\n"
    ) + snippet
    path = write(tmp_path, text)
    found = issues_of(path)
    # FILE:LINE:COLUMN, the column of the key at fault (8 or 9 in these snippets).
    assert any(
        re.match(rf"{re.escape(str(path))}:{line}:\d+: services\.shop\.", msg) and expected in msg
        for msg in found
    ), found


@pytest.mark.parametrize(
    ("service_yaml", "expected"),
    [
        (
            "upstream: ftp://x\n    routes: [{path: /, price: free}]",
            "upstream must be an http:// or https:// URL",
        ),
        ("upstream: http://x?a=1\n    routes: [{path: /, price: free}]", "must not carry a query"),
        (
            "upstream: http://x\n    mount: archive\n    routes: [{path: /, price: free}]",
            "mount must be a plain path",
        ),
        (
            "upstream: http://x\n    mount: /archive/\n    routes: [{path: /, price: free}]",
            "mount must be a plain path",
        ),
        (
            "upstream: http://x\n    host: 'a.gov:80'\n    routes: [{path: /, price: free}]",
            "host must be a plain host name",
        ),
        ("upstream: http://x\n    routes: []", "at least one route"),
        (
            "upstream: http://x\n    colour: blue\n    routes: [{path: /, price: free}]",
            "unknown key 'colour'",
        ),
        ("routes: [{path: /, price: free}]", "upstream: required key is missing"),
    ],
)
def test_service_errors(tmp_path: Path, service_yaml: str, expected: str) -> None:
    path = write(tmp_path, f"services:\n  svc:\n    {service_yaml}\n")
    found = issues_of(path)
    assert any(expected in msg and msg.startswith(f"{path}:") for msg in found), found


def test_yaml_syntax_error_and_duplicate_keys_have_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "services:\n  a:\n    upstream: http://x\n    upstream: http://y\n")
    assert issues_of(path) == [f"{path}:4: services.a: duplicate key 'upstream' (first at line 3)"]
    path = write(tmp_path, "services:\n  a: [unclosed\n")
    [msg] = issues_of(path)
    assert msg.startswith(f"{path}:3:1: YAML syntax")
    # PyYAML's commonest complaints, in an admin's words, at line and column.
    path = write(tmp_path, "services:\n  a:\n    upstream: http://x\n   routes: []\n")
    [msg] = issues_of(path)
    assert msg.startswith(f"{path}:4:4: YAML syntax: this line's indentation"), msg
    path = write(tmp_path, "services:\n\ta:\n")
    [msg] = issues_of(path)
    assert "a tab character: indent with spaces" in msg, msg


def test_cross_file_conflicts(tmp_path: Path) -> None:
    body = "  a:\n    upstream: http://x\n    routes: [{path: /, price: free}]\n"
    write(tmp_path, "services:\n" + body + "unmatched: 404\n", "1.yaml")
    write(tmp_path, "services:\n" + body + "unmatched: 403\n", "2.yaml")
    found = issues_of(tmp_path)
    assert any("2.yaml:2:3: services.a: service 'a' is already defined at" in m for m in found), (
        found
    )
    assert any("2.yaml:5:1: unmatched: 'unmatched' is already set at" in m for m in found), found
    assert found == sorted(found, key=lambda m: (m.split(":")[0], int(m.split(":")[1])))


def test_same_host_and_mount_twice_is_an_error(tmp_path: Path) -> None:
    svc = "    upstream: http://x\n    mount: /m\n    routes: [{path: /, price: free}]\n"
    path = write(tmp_path, f"services:\n  a:\n{svc}  b:\n{svc}")
    found = issues_of(path)
    assert any("services.b.mount: same host and mount as service 'a' at" in m for m in found)


def test_a_mount_taken_in_another_file_names_that_file(tmp_path: Path) -> None:
    svc = "    upstream: http://x\n    mount: /m\n    routes: [{path: /, price: free}]\n"
    write(tmp_path, f"services:\n  a:\n{svc}", "1.yaml")
    write(tmp_path, f"services:\n  b:\n{svc}", "2.yaml")
    [msg] = issues_of(tmp_path)
    assert msg.startswith(f"{tmp_path / '2.yaml'}:4:5: services.b.mount:"), msg
    assert f"as service 'a' at {tmp_path / '1.yaml'}:4" in msg


def test_a_policy_without_services_is_refused(tmp_path: Path) -> None:
    """An empty file, or one with only comments, would serve nothing: refused."""
    write(tmp_path, "# nothing yet\n", "empty.yaml")
    [msg] = issues_of(tmp_path)
    assert "no services" in msg


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        services:
          a:
            upstream: nope
            routes:
              - {path: /x, price: -1}
              - {path: /y, price: 2, grant: {lasts: soon}}
        unmatched: 999
        """,
    )
    assert len(issues_of(path)) == 4


def test_empty_or_missing_policy(tmp_path: Path) -> None:
    assert "no *.yaml policy files" in issues_of(tmp_path)[0]
    assert "no such file" in issues_of(tmp_path / "missing")[0]
    assert "a policy file is a mapping" in issues_of(write(tmp_path, "- just\n- a list\n"))[0]


# --- patterns --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        ("/", ["/"], ["/a", ""]),
        ("/a/**", ["/a", "/a/", "/a/b", "/a/b/c"], ["/ab", "/b/a"]),
        ("/**", ["/", "/x/y"], []),
        ("/a/*/c", ["/a/b/c"], ["/a/c", "/a//c", "/a/b/b/c"]),
        ("/r/{id}", ["/r/1", "/r/a b"], ["/r/", "/r/1/2"]),
        ("/f/*.pdf", ["/f/a.pdf", "/f/.pdf"], ["/f/a.pdfx", "/f/a/b.pdf"]),
        ("/d/{name}.csv", ["/d/x.csv"], ["/d/.csv"]),
        ("/a/**/z", ["/a/z", "/a/b/z", "/a/b/c/z"], ["/a/b"]),
        ("/x.y", ["/x.y"], ["/xzy"]),  # regex metacharacters are literal
    ],
)
def test_pattern_matching(pattern: str, yes: list[str], no: list[str]) -> None:
    compiled = compile_pattern(pattern)
    for path in yes:
        assert compiled.regex.fullmatch(path), (pattern, path)
    for path in no:
        assert not compiled.regex.fullmatch(path), (pattern, path)


@pytest.mark.parametrize(
    ("earlier", "later", "expected"),
    [
        ("/**", "/a/b", True),
        ("/a/**", "/a", True),
        ("/a/**", "/a/b/**", True),
        ("/a/*", "/a/{id}", True),
        ("/a/*", "/a/x.pdf", True),
        ("/a/*.pdf", "/a/x.pdf", True),
        ("/a/*", "/a/", False),
        ("/a/b", "/a/*", False),
        ("/a/*", "/a/**", False),
        ("/a/*.pdf", "/a/*.csv", False),
        ("/a/**", "/b/**", False),
    ],
)
def test_shadowing(earlier: str, later: str, expected: bool) -> None:
    assert shadows(compile_pattern(earlier), compile_pattern(later)) is expected


def test_shadowing_respects_case_rule() -> None:
    a, b = compile_pattern("/Docs/**"), compile_pattern("/docs/x")
    assert not shadows(a, b, case_sensitive=True)
    assert shadows(a, b, case_sensitive=False)


@pytest.mark.parametrize(
    "bad", ["a", "/a//b", "/a/**b", "/a/{1x}", "/a/{x", "/a;b", "/a?b", "/a%2f", "/a/../b", "/a b"]
)
def test_bad_patterns(bad: str) -> None:
    with pytest.raises(PatternError):
        compile_pattern(bad)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("24h", 86400), ("7d", 604800), ("1w", 604800), ("1h30m", 5400)],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "10", "1.5h", "30m1h", "1 h", "-5m", "0s", 10, True, None])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_example_policies_are_valid() -> None:
    policy = load_policy(Path(__file__).parent.parent / "policies")
    assert {s.name for s in policy.services} >= {"archive", "opendata", "meter", "transit"}
