"""Activation SPEC strings (``relu``, ``lrelu0.01``, ``bern9:delta=0.01:range=-5,5``) -> modules.

A spec is parsed once, at the edge, into an ``ActivationSpec`` whose ``name`` is canonical (the
same spec always prints the same way, e.g. ``lrelu1e-2`` -> ``lrelu0.01``), so a typo fails
before any model is touched and the message lists every valid form.

Grammar: ``NAME`` for fixed activations (``relu``, ``gelu``, ...), ``FAMILY<number>`` for
parametrised ones (``lrelu<slope>``, ``nrelu<sigma>``, ``bern<degree>``), then ``:key=value``
options (Bernstein only: ``delta=D``, ``range=L,U`` or ``range=auto``), then the modifiers every
spec takes: ``:init=SCHEME`` (``compare`` re-initialises the variant's Linear/Conv weights with
``he``, ``lecun``, ``xavier`` or ``torch`` after the swap, e.g. ``selu:init=lecun`` for SELU's
LeCun-normal init; ``neurodiag.compare.training.initialise``), ``:bn`` (batch normalisation in
front of the activation: the paper's SELU_BN and its Bernstein layer,
``neurodiag.activations.normalized``) and ``:res`` (skip connections around shape-preserving
Linear → activation blocks: the paper's ReLU_res, ``neurodiag.activations.residual``), in the
canonical order ``NAME[:options][:init=S][:bn][:res]``. ``range=auto`` means
[mean − 3·std, mean + 3·std] of the site's pre-activations z over a calibration forward pass
(``swap_activations`` computes it from ``example_batch``; ``build`` then takes ``bounds``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from neurodiag.activations.golu import GoLU
from neurodiag.activations.nrelu import NReLU
from neurodiag.errors import NeurodiagError

#: (num_features, feature_dim) -> a fresh module; fixed activations ignore both.
Factory = Callable[[int | None, int], nn.Module]

BERNSTEIN_DEFAULTS = {"delta": 0.01, "lower": -5.0, "upper": 5.0}
AUTO_RANGE_STDS = 3.0


@dataclass(frozen=True)
class ActivationSpec:
    """A parsed activation spec: canonical ``name`` and how to build one module per site.

    ``per_neuron`` says the module has per-neuron parameters (it wants the site's width);
    ``auto_range`` says ``build`` needs ``bounds`` measured at the site.
    """

    name: str
    factory: Callable[..., nn.Module]
    per_neuron: bool = False
    auto_range: bool = False
    #: ``:res``: the swapped model also gets skip connections (``add_residuals``)
    residual: bool = False
    #: ``:init=SCHEME``: the variant's Linear/Conv weights are re-initialised (``compare`` only)
    init: str | None = None

    def build(
        self,
        num_features: int | None = None,
        feature_dim: int = 1,
        *,
        bounds: tuple[float, float] | None = None,
    ) -> nn.Module:
        """A fresh module for one site (``num_features=None``: parameters shared by all neurons)."""
        if self.auto_range:
            if bounds is None:
                raise NeurodiagError(
                    f"activation {self.name!r} uses range=auto, which needs the site's "
                    "pre-activations: pass an example batch (or give range=L,U)"
                )
            return self.factory(num_features, feature_dim, bounds=bounds)
        return self.factory(num_features, feature_dim)


@dataclass(frozen=True)
class _Family:
    """A parametrised spec: ``prefix<number>[:options]`` -> ActivationSpec."""

    form: str
    parse: Callable[[float, str, dict[str, str]], ActivationSpec]


_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?"
_HEAD = re.compile(rf"^(?P<prefix>[a-z_]+?)(?P<number>{_NUMBER})$")


def format_number(value: float) -> str:
    """Shortest exact form used in canonical names (0.01, 0.005, 1e-05, 5): round-trips."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


class SpecRegistry:
    """Spec names and families; refuses silent overrides and lists valid forms on errors."""

    def __init__(self) -> None:
        self._fixed: dict[str, Factory] = {}
        self._families: dict[str, _Family] = {}

    def register(self, name: str, factory: Factory, *, overwrite: bool = False) -> None:
        """Add a fixed spec ``name`` (lowercase letters, digits, ``_``; not a family prefix)."""
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ValueError(f"spec names are lowercase identifiers, got {name!r}")
        if (name in self._fixed or name in self._families) and not overwrite:
            raise ValueError(
                f"activation spec {name!r} is already registered; pass overwrite=True to replace it"
            )
        self._fixed[name] = factory

    def register_family(
        self,
        prefix: str,
        form: str,
        parse: Callable[[float, str, dict[str, str]], ActivationSpec],
        *,
        overwrite: bool = False,
    ) -> None:
        """Add ``prefix<number>[:key=value...]``; ``parse(number, text, options)`` builds it."""
        if (prefix in self._families or prefix in self._fixed) and not overwrite:
            raise ValueError(
                f"activation spec {prefix!r} is already registered; "
                "pass overwrite=True to replace it"
            )
        self._families[prefix] = _Family(form, parse)

    def forms(self) -> list[str]:
        """Every valid form, fixed names first, for help texts and error messages."""
        return [
            *self._fixed,
            *(family.form for family in self._families.values()),
            f"any of them + :init={'|'.join(WEIGHT_INITS)}, :bn and/or :res",
        ]

    def parse(self, text: str) -> ActivationSpec:
        """``text`` -> ActivationSpec, or a one-line NeurodiagError naming the valid forms."""
        if not isinstance(text, str) or not text.strip():
            raise self._unknown(str(text))
        head, *parts = text.strip().lower().split(":")
        modifiers = [p.strip() for p in parts if p.strip() in MODIFIERS]
        inits = [p for p in parts if p.partition("=")[0].strip() == "init"]
        parts = [p for p in parts if p.strip() not in MODIFIERS and p not in inits]
        if len(set(modifiers)) != len(modifiers) or len(inits) > 1:
            raise NeurodiagError(f"a modifier is given twice in activation {text!r}")
        init = _init(inits[0], text) if inits else None
        options = self._options(text, parts)
        if head in self._fixed:
            if options:
                raise NeurodiagError(
                    f"activation {head!r} takes no options, got {':'.join(parts)!r}"
                )
            spec = ActivationSpec(head, self._fixed[head])
        else:
            match = _HEAD.match(head)
            if match is None or match["prefix"] not in self._families:
                raise self._unknown(text)
            family = self._families[match["prefix"]]
            spec = family.parse(float(match["number"]), text, options)
        return _modified(spec, modifiers, init)

    def _options(self, text: str, parts: list[str]) -> dict[str, str]:
        options: dict[str, str] = {}
        for part in parts:
            key, sep, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or not key or not value:
                raise NeurodiagError(
                    f"malformed option {part!r} in activation {text!r}; write key=value, "
                    "e.g. bern9:delta=0.01:range=-5,5"
                )
            if key in options:
                raise NeurodiagError(f"option {key!r} given twice in activation {text!r}")
            options[key] = value
        return options

    def _unknown(self, text: str) -> NeurodiagError:
        return NeurodiagError(f"unknown activation {text!r}; valid: {', '.join(self.forms())}")


#: Flags any spec takes, in canonical order: ``:bn`` then ``:res``.
MODIFIERS: tuple[str, ...] = ("bn", "res")

#: The schemes ``:init=`` takes (``compare``'s ``--init`` also takes ``model``: as built).
WEIGHT_INITS: tuple[str, ...] = ("he", "lecun", "xavier", "torch")


def _init(part: str, text: str) -> str:
    value = part.partition("=")[2].strip()
    if value not in WEIGHT_INITS:
        raise NeurodiagError(
            f"unknown init {value!r} in activation {text!r}; valid: {', '.join(WEIGHT_INITS)}"
        )
    return value


def _modified(spec: ActivationSpec, modifiers: list[str], init: str | None) -> ActivationSpec:
    """``spec`` with ``:init=S``, ``:bn`` (a BatchNorm over the neuron axis in front), ``:res``."""
    if init is not None:
        spec = replace(spec, name=f"{spec.name}:init={init}", init=init)
    if "bn" in modifiers:
        inner = spec
        # range=auto is ±3 std of what the activation receives: behind the norm that is a unit-
        # variance input, so exactly [-3, 3] (no calibration needed, the same for every site)
        normalised = (-AUTO_RANGE_STDS, AUTO_RANGE_STDS)

        def build(num_features: int | None, feature_dim: int, **kwargs: Any) -> nn.Module:
            from neurodiag.activations.normalized import NormalizedActivation

            if num_features is None:
                raise NeurodiagError(
                    f"activation {inner.name}:bn needs each site's width: pass an example batch"
                )
            if inner.auto_range:
                kwargs = {**kwargs, "bounds": normalised}
            return NormalizedActivation(
                num_features, feature_dim, inner.build(num_features, feature_dim, **kwargs)
            )

        spec = replace(
            spec, name=f"{spec.name}:bn", factory=build, per_neuron=True, auto_range=False
        )
    if "res" in modifiers:
        spec = replace(spec, name=f"{spec.name}:res", residual=True)
    return spec


def _module_factory(cls: Callable[[], nn.Module]) -> Factory:
    def build(num_features: int | None, feature_dim: int) -> nn.Module:
        return cls()

    return build


def _no_options(prefix: str, text: str, options: dict[str, str]) -> None:
    if options:
        raise NeurodiagError(f"activation {text!r}: {prefix}<number> takes no options")


def _lrelu(slope: float, text: str, options: dict[str, str]) -> ActivationSpec:
    _no_options("lrelu", text, options)
    if not math.isfinite(slope):
        raise NeurodiagError(
            f"activation {text!r}: the slope must be a finite number, got {slope:g}; "
            "write e.g. lrelu0.01"
        )
    name = f"lrelu{format_number(slope)}"
    return ActivationSpec(name, lambda n, d: nn.LeakyReLU(slope))


def _nrelu(sigma: float, text: str, options: dict[str, str]) -> ActivationSpec:
    _no_options("nrelu", text, options)
    if not math.isfinite(sigma):
        raise NeurodiagError(
            f"activation {text!r}: sigma must be a finite number, got {sigma:g}; "
            "write e.g. nrelu0.1"
        )
    name = f"nrelu{format_number(sigma)}"
    return ActivationSpec(name, lambda n, d: NReLU(sigma))


#: The largest Bernstein degree: its conversion matrix
#: (``bernstein_reference.conversion_matrix``) holds integers up to ~n·4^n, exact in the float64
#: tables only up to 2^53 (n = 36); a larger degree overflowed int64 (n ≥ 43) or took minutes to
#: build (bern100000).
MAX_BERNSTEIN_DEGREE = 36


def _bernstein(degree_value: float, text: str, options: dict[str, str]) -> ActivationSpec:
    if not math.isfinite(degree_value) or degree_value != int(degree_value) or degree_value < 1:
        raise NeurodiagError(f"activation {text!r}: the Bernstein degree must be an integer >= 1")
    if degree_value > MAX_BERNSTEIN_DEGREE:
        raise NeurodiagError(
            f"activation {text!r}: the Bernstein degree must be at most {MAX_BERNSTEIN_DEGREE} "
            "(its coefficient tables are exact in float64 only up to there); use e.g. bern9"
        )
    degree = int(degree_value)
    unknown = sorted(set(options) - {"delta", "range"})
    if unknown:
        raise NeurodiagError(
            f"activation {text!r}: unknown option {unknown[0]!r}; "
            "bern<degree> takes delta=D and range=L,U|auto"
        )
    delta = _positive(options.get("delta"), BERNSTEIN_DEFAULTS["delta"], "delta", text)
    auto, lower, upper = _range(options.get("range"), text)
    name = f"bern{degree}"
    if delta != BERNSTEIN_DEFAULTS["delta"]:
        name += f":delta={format_number(delta)}"
    if auto:
        name += ":range=auto"
    elif (lower, upper) != (BERNSTEIN_DEFAULTS["lower"], BERNSTEIN_DEFAULTS["upper"]):
        name += f":range={format_number(lower)},{format_number(upper)}"

    def build(
        num_features: int | None,
        feature_dim: int,
        bounds: tuple[float, float] = (lower, upper),
    ) -> nn.Module:
        from neurodiag.activations.bernstein import Bernstein

        return Bernstein(degree, delta, bounds[0], bounds[1], num_features, feature_dim)

    return ActivationSpec(name, build, per_neuron=True, auto_range=auto)


def _positive(value: str | None, default: float, key: str, text: str) -> float:
    if value is None:
        return default
    number = _float(value, key, text)
    if number <= 0:
        raise NeurodiagError(f"activation {text!r}: {key} must be > 0, got {value}")
    return number


def _float(value: str, key: str, text: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise NeurodiagError(f"activation {text!r}: {key}={value!r} is not a number") from None
    if not math.isfinite(number):
        raise NeurodiagError(f"activation {text!r}: {key} must be finite, got {value}")
    return number


def _range(value: str | None, text: str) -> tuple[bool, float, float]:
    if value is None:
        return False, BERNSTEIN_DEFAULTS["lower"], BERNSTEIN_DEFAULTS["upper"]
    if value == "auto":
        return True, math.nan, math.nan
    ends = value.split(",")
    if len(ends) != 2:
        raise NeurodiagError(
            f"activation {text!r}: range must be L,U (e.g. range=-5,5) or auto, got {value!r}"
        )
    lower, upper = (_float(end.strip(), "range", text) for end in ends)
    if not lower < upper:
        raise NeurodiagError(f"activation {text!r}: range needs L < U, got {value}")
    return False, lower, upper


def _default_specs() -> SpecRegistry:
    specs = SpecRegistry()
    fixed: dict[str, Callable[[], nn.Module]] = {
        "relu": nn.ReLU,
        "gelu": nn.GELU,
        "selu": nn.SELU,
        "elu": nn.ELU,
        "silu": nn.SiLU,
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "golu": GoLU,
    }
    for name, cls in fixed.items():
        specs.register(name, _module_factory(cls))
    specs.register_family("lrelu", "lrelu<slope>", _lrelu)
    specs.register_family("nrelu", "nrelu<sigma>", _nrelu)
    specs.register_family("bern", "bern<degree>[:delta=D][:range=L,U|auto]", _bernstein)
    return specs


#: The specs every CLI command and ``compare`` understand.
SPECS = _default_specs()


def parse_spec(text: str) -> ActivationSpec:
    """Parse an activation spec string (see the module docstring for the grammar)."""
    return SPECS.parse(text)


def register_spec(name: str, factory: Factory, overwrite: bool = False) -> None:
    """Add a fixed activation spec; refuses to replace an existing one unless ``overwrite``."""
    SPECS.register(name, factory, overwrite=overwrite)


def valid_forms() -> list[str]:
    return SPECS.forms()


__all__ = [
    "SPECS",
    "WEIGHT_INITS",
    "ActivationSpec",
    "Factory",
    "SpecRegistry",
    "parse_spec",
    "register_spec",
    "valid_forms",
]
