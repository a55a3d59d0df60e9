"""What the scan's backward asks autograd for: as little as gives every site its ∂L/∂a.

A scan needs ∂L/∂a at each activation site, never the weight gradients. Asking autograd only for
the gradient of the (float) model inputs computes ∂L/∂a on every path from the loss to the input
and skips every weight-gradient product (a third of a Linear layer's backward FLOPs, most of a
convolution's on CPU). That is exact only for sites whose output depends on an input; a site fed
by parameters alone (``sigmoid(self.gate)``) or a model fed integer ids needs the parameters
asked for too. ``all_reach`` decides that per batch by walking the autograd graph.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor

Node = Any  # torch.autograd.graph.Node (C++ nodes have no common Python base to annotate with)


def all_reach(starts: Iterable[Node | None], stops: set[Node]) -> bool:
    """True when every node of ``starts`` has a path (along ``next_functions``) into ``stops``.

    A depth-first walk that remembers every node it settled, so a chain of N sites costs O(graph)
    once, not O(N · graph): a later site's walk stops at the first node an earlier walk passed.
    ``None`` in ``starts`` (an output with no autograd node) never reaches.
    """
    known: dict[Node, bool] = dict.fromkeys(stops, True)
    for start in starts:
        if start is None:
            return False
        settled = known.get(start)
        if settled is None:
            settled = _walk(start, known)
        if not settled:
            return False
    return True


def _walk(start: Node, known: dict[Node, bool]) -> bool:
    stack: list[tuple[Node, Any]] = [(start, iter(start.next_functions))]
    while stack:
        node, children = stack[-1]
        for child, _ in children:
            if child is None:
                continue
            settled = known.get(child)
            if settled:  # the path on the stack reaches a stop
                for on_path, _ in stack:
                    known[on_path] = True
                return True
            if settled is None:
                stack.append((child, iter(child.next_functions)))
                break
        else:  # every child explored without reaching: a dead end (graphs are acyclic)
            known[node] = False
            stack.pop()
    return False


def input_nodes(fed: Sequence[Tensor]) -> set[Node]:
    """The autograd nodes of the tensors handed to the model (clones of the input leaves)."""
    return {t.grad_fn for t in fed if t.grad_fn is not None}


def choose_targets(
    leaves: list[Tensor],
    fed: Sequence[Tensor],
    params: list[Tensor],
    watched: Sequence[Node | None],
) -> list[Tensor]:
    """The tensors to pass to ``torch.autograd.grad`` for this batch (see the module docstring)."""
    if leaves and all_reach(watched, input_nodes(fed)):
        return leaves
    return leaves + params
