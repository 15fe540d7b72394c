"""Keeping the live policy current without a restart.

The running server reads `holder.current` once per request; a reload builds a
complete new `Policy` off to the side and swaps the reference, so a request
sees either the old policy or the new one, never a mix. A policy that fails
validation is refused and logged, and the old one keeps serving.
"""

from __future__ import annotations

import logging
from pathlib import Path

from watchfiles import Change, awatch

from gateway.edge import metrics
from gateway.policy.compiled import Policy
from gateway.policy.load import SUFFIXES, load_policy
from gateway.policy.source import PolicyError

log = logging.getLogger("farebox.policy")


class PolicyHolder:
    def __init__(self, path: Path, policy: Policy) -> None:
        self.path = path
        self.current = policy
        self.last_error: str | None = None

    @classmethod
    def load(cls, path: Path) -> PolicyHolder:
        return cls(path, load_policy(path))

    def reload(self) -> bool:
        """Swap in the policy on disk if it is valid; return whether it is live."""
        try:
            policy = load_policy(self.path)
        except PolicyError as exc:
            metrics.RELOADS.labels("refused").inc()
            self.last_error = str(exc)
            log.error(
                "policy reload refused, still serving version %s:\n%s", self.current.version, exc
            )
            return False
        self.last_error = None
        metrics.RELOADS.labels("ok").inc()
        if policy.version != self.current.version:
            self.current = policy
            log.info("policy version %s loaded from %s", policy.version, ", ".join(policy.sources))
        return True

    async def watch(self) -> None:
        """Reload whenever a policy file changes (runs until cancelled)."""
        # Watch the directory, not the files: editors save by renaming a new
        # file over the old one, which a watch on the file itself would lose.
        target = self.path.resolve()
        root = target if target.is_dir() else target.parent

        def relevant(change: Change, name: str) -> bool:
            p = Path(name)
            return p.suffix in SUFFIXES if root == target else p.resolve() == target

        async for _ in awatch(root, watch_filter=relevant, debounce=200, step=50, recursive=False):
            self.reload()
