"""One activation site: identity, naming and its statistics."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from torch import Tensor

from neurodiag.stats.observation import ForwardObservation, reduction_dims
from neurodiag.stats.site_stats import SiteStats, SiteSummary, summarize_sites

ROOT_NAME = "<root>"


@dataclass(frozen=True)
class SiteKey:
    """Stable identity across batches and ranks: qualified name, op (functional) and call index."""

    module: str
    op: str | None
    index: int

    def candidate_names(self) -> tuple[str, ...]:
        """Names an --include/--exclude glob may match before the final name is known."""
        if self.op is None:
            base = self.module or ROOT_NAME
            return (base, f"{base}#{self.index}")
        return (f"{self.module or ROOT_NAME}:{self.op}#{self.index}",)


@dataclass
class Site:
    key: SiteKey
    activation: str
    kind: str  # "module" | "functional"
    feature_dim: int
    neurons: int
    delta_bar: float | None
    stats: SiteStats
    _dims: dict[int, tuple[int, ...]] = field(default_factory=dict, repr=False, compare=False)

    def dims(self, ndim: int) -> tuple[int, ...]:
        """Reduction dims for a call with ``ndim`` dims (cached: the hot path asks every call)."""
        cached = self._dims.get(ndim)
        if cached is None:
            cached = self._dims[ndim] = reduction_dims(ndim, self.feature_dim)
        return cached

    def observe(self, obs: ForwardObservation) -> None:
        self.stats.observe(obs)

    def grad_hook(self, dims: tuple[int, ...]) -> Callable[[Tensor], None]:
        """The tensor hook feeding ∂L/∂a to the current statistics (built once per dims)."""
        return self.stats.tensor_hook(dims)

    def watch_grad(self, a: Tensor, dims: tuple[int, ...]) -> None:
        """Feed ∂L/∂a of this call to the current statistics during backward.

        A pre-hook on a's autograd node when it has one (what ``Tensor.register_hook`` does under
        the hood, minus its Python wrapper), else a tensor hook. The hook is bound to the
        statistics object current now, as a per-call closure was.
        """
        node = a.grad_fn
        if node is not None:
            stats = self.stats
            hook = stats._node_hooks.get((dims, a.output_nr)) or stats.node_hook(dims, a.output_nr)
            node.register_prehook(hook)
        else:
            a.register_hook(self.stats.tensor_hook(dims))  # type: ignore[no-untyped-call]


def display_names(keys: list[SiteKey]) -> dict[SiteKey, str]:
    """Module sites called once keep their plain name; reused modules get ``#i`` per call."""
    calls: dict[str, int] = {}
    for key in keys:
        if key.op is None:
            calls[key.module] = max(calls.get(key.module, 0), key.index + 1)
    names: dict[SiteKey, str] = {}
    for key in keys:
        if key.op is None:
            base = key.module or ROOT_NAME
            names[key] = base if calls[key.module] == 1 else f"{base}#{key.index}"
        else:
            names[key] = key.candidate_names()[0]
    return names


def summarize(sites: Iterable[Site]) -> list[SiteSummary]:
    """Each site's summary, in order, with one host transfer for all (``summarize_sites``)."""
    listed = list(sites)
    return summarize_sites([s.stats for s in listed], [s.delta_bar for s in listed])
