"""Reward routes in the policy (issue 15, point 1): what may be written, and the errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.policy import PolicyError, load_policy

ISSUER = """\
concessions:
  residents:
    description: Registered residents
    discount: 100
    issuer_key: |
      -----BEGIN PUBLIC KEY-----
      MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=
      -----END PUBLIC KEY-----
"""


def policy(tmp_path: Path, routes: str) -> Path:
    text = ISSUER + textwrap.dedent(
        """\
        services:
          city:
            upstream: http://127.0.0.1:9/consult
            mount: /consult
            routes:
        """
    )
    text += textwrap.indent(textwrap.dedent(routes), "      ")
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    return [str(issue) for issue in caught.value.issues]


def test_a_reward_route_loads_with_its_campaign_budget_and_credentials(tmp_path: Path) -> None:
    loaded = load_policy(
        policy(
            tmp_path,
            """\
            - path: /surveys/{survey}/responses
              methods: [POST]
              price: free
              reward:
                pays: {eur_cents: 50}
                campaign: park-2027
                requires: residents
                budget: {total: 1000000, per_day: 50000}
                when_exhausted: refuse
            """,
        )
    )
    route = loaded.services[0].routes[0].route
    reward = route.reward
    assert reward is not None and reward.campaign == "park-2027"
    assert reward.pays.currency == "EUR" and reward.requires == ("residents",)
    assert (reward.budget.total, reward.budget.per_day) == (1_000_000, 50_000)
    assert reward.when_exhausted == "refuse" and reward.once_per == "subject"


@pytest.mark.parametrize(
    ("reward", "expected"),
    [
        (
            "{pays: free, requires: [residents], budget: {total: 9}, campaign: c}",
            "pays at least 1 satoshi",
        ),
        ("{pays: 0, requires: [residents], budget: {total: 9}, campaign: c}", "at least 1 satoshi"),
        ("{pays: 5, requires: [], budget: {total: 9}, campaign: c}", "requires names the"),
        ("{pays: 5, requires: [voters], budget: {total: 9}, campaign: c}", "unknown concession"),
        ("{pays: 5, requires: [residents], budget: {total: 9}}", "campaign: required key"),
        ("{pays: 5, requires: [residents]}", "budget: required key is missing"),
        ("{pays: 5, requires: [residents], budget: {total: 0}}", "budget.total"),
        (
            "{pays: 5, requires: [residents], budget: {total: 9, per_day: 10}}",
            "per_day (10) is more than the total (9)",
        ),
        (
            "{pays: 5, requires: [residents], budget: {total: 9, per_dya: 1}}",
            "did you mean 'per_day'?",
        ),
        ("{pays: 5, requires: [residents], budget: {total: 9}, once: x}", "unknown key 'once'"),
        (
            "{pays: 5, requires: [residents], budget: {total: 9}, campaign: Park 2027}",
            "campaign 'Park 2027' must be lower-case",
        ),
        (
            "{pays: 5, requires: [residents], budget: {total: 9}, when_exhausted: pay}",
            "when_exhausted",
        ),
    ],
)
def test_a_bad_reward_is_named_by_line_and_key(tmp_path: Path, reward: str, expected: str) -> None:
    found = problems(
        policy(tmp_path, f"- path: /r\n  methods: [POST]\n  price: free\n  reward: {reward}\n")
    )
    assert any(expected in p and "p.yaml:" in p for p in found), found


def test_a_rewarded_route_is_free_and_has_no_quota(tmp_path: Path) -> None:
    reward = "{pays: 5, requires: [residents], budget: {total: 9}, campaign: c}"
    found = problems(
        policy(tmp_path, f"- path: /r\n  methods: [POST]\n  price: 10\n  reward: {reward}\n")
    )
    assert any("proxied free: set `price: free`" in p for p in found), found
    found = problems(
        policy(
            tmp_path,
            f"- path: /r\n  methods: [POST]\n  price: free\n  free_quota: {{requests: 1, per: 1h}}\n"
            f"  reward: {reward}\n",
        )
    )
    assert any("drop `free_quota`" in p for p in found), found


def test_one_campaign_is_one_budget(tmp_path: Path) -> None:
    reward = "{pays: 5, requires: [residents], budget: {total: 9}, campaign: vote}"
    found = problems(
        policy(
            tmp_path,
            f"- path: /a\n  methods: [POST]\n  price: free\n  reward: {reward}\n"
            f"- path: /b\n  methods: [POST]\n  price: free\n  reward: {reward}\n",
        )
    )
    assert any("campaign 'vote' is already rewarded at" in p for p in found), found


@pytest.mark.parametrize("methods", ["[GET]", "[POST, HEAD]", "'*'", "[OPTIONS]", None])
def test_a_reward_is_for_an_answer_sent_not_a_page_read(tmp_path: Path, methods) -> None:
    reward = "{pays: 5, requires: [residents], budget: {total: 9}, campaign: c}"
    line = "" if methods is None else f"  methods: {methods}\n"
    found = problems(policy(tmp_path, f"- path: /r\n{line}  price: free\n  reward: {reward}\n"))
    assert any("a reward is for taking part" in p for p in found), found
