"""Policies: what is free, what costs how much, and what a payment buys."""

from gateway.policy.compiled import CompiledRoute, CompiledService, Match, NoMatch, Policy
from gateway.policy.load import load_policy, policy_files
from gateway.policy.schema import Grant, Price, Quota, Route, Service, parse_duration
from gateway.policy.source import Issue, PolicyError

__all__ = [
    "CompiledRoute",
    "CompiledService",
    "Grant",
    "Issue",
    "Match",
    "NoMatch",
    "Policy",
    "PolicyError",
    "Price",
    "Quota",
    "Route",
    "Service",
    "load_policy",
    "parse_duration",
    "policy_files",
]
