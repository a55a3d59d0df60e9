"""The naming rule of functional sites, shared by the recorder and ``swap_activations``.

A functional site is keyed by the innermost module whose forward made the call, the op, and
the call index of that op inside that module during one top-level forward. Recording (scan,
Monitor) and swapping use this one tracker, so the site a report names is the site a swap
replaces.
"""

from __future__ import annotations

from neurodiag.sites.site import SiteKey


class FunctionalKeys:
    """Module stack and per-(owner, op) call counters of the forward in progress."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self._calls: dict[tuple[str, str], int] = {}

    def new_forward(self) -> None:
        """A new top-level forward: call indices start again."""
        self._calls.clear()

    def enter(self, name: str) -> None:
        self.stack.append(name)

    def leave(self) -> None:
        if self.stack:
            self.stack.pop()

    @property
    def depth(self) -> int:
        """Modules whose forward is running (0 between top-level forwards)."""
        return len(self.stack)

    def next_key(self, op: str) -> SiteKey:
        """The key of this call of ``op``, counting it."""
        owner = self.stack[-1] if self.stack else ""
        counter = (owner, op)
        index = self._calls.get(counter, 0)
        self._calls[counter] = index + 1
        return SiteKey(owner, op, index)

    def clear(self) -> None:
        self.stack.clear()
        self._calls.clear()
