"""Which dim of a tensor indexes features, followed from the layer that produced it (issue 12).

The shape of an activation alone cannot say where its neurons are: ConvNeXt and Swin blocks
permute to channels-last ``(N, H, W, C)`` before ``Linear → GELU``, Wav2Vec2 applies GELU to a
channel-first ``(N, C, T)`` conv output. So during the discovery forward (the first one) the
recorder's torch function mode shows every torch call to an ``AxisTracker``, which tags each
output tensor with its feature dim:

- **producers define it**: ``linear``, ``matmul``/``mm``/``bmm``, ``embedding`` → the last dim,
  except a matrix product with a parameter on the left (``W @ x``, Mamba's ``dt_proj``) → dim -2,
  the weight's rows; ``conv*``, ``batch_norm``, ``group_norm``, ``instance_norm`` → dim 1;
- **layout ops move it**: ``permute``, ``transpose``/``swapaxes``, ``movedim``, ``t``, ``.mT``;
  ``view``, ``reshape``, ``flatten``, ``squeeze``/``unsqueeze``, ``expand`` follow the dim by its
  size and the product of the sizes after it (or, failing that, before it), and drop it when it is
  merged or split;
- ``einsum``/``tensordot`` drop it (their layout lives in a string);
- **everything else carries it** (elementwise ops, adds, norms, dropout, padding, pooling,
  slicing...): same number of dims keeps the dim, fewer follow it by size, more align right as
  broadcasting does. Tagged arguments that map to different dims are a conflict: the first one
  wins and the site says so in a note.

A site whose input has no tag (the activation is applied to the model's input, an op the mode
cannot see, a site first reached after discovery) falls back to ``auto_feature_dim``.

The tracker also remembers which tensors are site outputs (through layout ops), so that a site
whose output **gates** another tensor is recognised: multiplied into a tensor it broadcasts over
(squeeze-and-excitation; Mamba2's ``x * softplus(dt)[..., None]``: indexing that only adds dims
keeps the values), or a sigmoid/hard-sigmoid multiplied into another tensor (LSTM-style).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.weak import WeakTensorKeyDictionary

T = torch.Tensor


@dataclass(frozen=True)
class Axis:
    """The feature dim of one tensor (non-negative), the op that defined it, and any conflict."""

    dim: int
    origin: str
    conflict: str | None = None


def _named(*funcs: Any) -> dict[Any, str]:
    return {f: getattr(f, "__name__", str(f)) for f in funcs}


#: Producers whose output's features are its last dim.
LAST_DIM_PRODUCERS: dict[Any, str] = _named(
    F.linear,
    F.bilinear,
    F.embedding,
    torch.matmul,
    T.matmul,
    T.__matmul__,
    T.__rmatmul__,
    torch.mm,
    T.mm,
    torch.bmm,
    T.bmm,
    torch.addmm,
    torch.baddbmm,
)
#: Producers whose output's features are dim 1 (channels).
CHANNEL_PRODUCERS: dict[Any, str] = _named(
    F.conv1d,
    F.conv2d,
    F.conv3d,
    F.conv_transpose1d,
    F.conv_transpose2d,
    F.conv_transpose3d,
    F.batch_norm,
    F.group_norm,
    F.instance_norm,
)
_OPAQUE: frozenset[Any] = frozenset({torch.einsum, torch.tensordot})
_VIEWS: frozenset[Any] = frozenset(
    {
        T.view,
        T.view_as,
        T.reshape,
        T.reshape_as,
        torch.reshape,
        T.flatten,
        torch.flatten,
        T.unflatten,
        torch.unflatten,
        T.squeeze,
        torch.squeeze,
        T.unsqueeze,
        torch.unsqueeze,
        T.expand,
        T.expand_as,
    }
)
_TRANSPOSES: frozenset[Any] = frozenset(
    {T.transpose, torch.transpose, T.swapaxes, torch.swapaxes, T.swapdims, torch.swapdims}
)
_MOVEDIMS: frozenset[Any] = frozenset({T.movedim, torch.movedim, T.moveaxis, torch.moveaxis})
_PERMUTES: frozenset[Any] = frozenset({T.permute, torch.permute})
_MATRIX_T: frozenset[Any] = frozenset({T.t, torch.t})
_TRANSPOSE_PROPERTIES = (T.T, T.mT, T.H, T.mH)
#: Ops through which a site's output is still "the same values" (for gate detection).
_SAME_VALUES: frozenset[Any] = (
    _VIEWS
    | _TRANSPOSES
    | _MOVEDIMS
    | _PERMUTES
    | _MATRIX_T
    | {
        T.contiguous,
        T.clone,
        torch.clone,
        T.to,
        T.float,
        T.half,
        T.bfloat16,
        T.double,
        T.type_as,
    }
)
_MULTIPLY: frozenset[Any] = frozenset(
    {torch.mul, torch.multiply, T.mul, T.mul_, T.multiply, T.__mul__, T.__rmul__, T.__imul__}
)
#: Activations whose [0, 1] output scales whatever it multiplies: a gate even at equal shapes.
GATING_ACTIVATIONS = frozenset({"sigmoid", "hardsigmoid"})


def follow_dim(shape_in: Sequence[int], dim: int, shape_out: Sequence[int]) -> int | None:
    """Where dim ``dim`` of ``shape_in`` went in ``shape_out`` after a reshape-like op.

    The dim survives when the output has a dim of the same size with the same product of
    sizes after it (``(N, T, D) → (N·T, D)``) or, failing that, before it (``(N, C, 1, 1)
    → (N, C, H, W)``, a reduction over trailing dims); None when it was merged or split.
    """
    if tuple(shape_in) == tuple(shape_out):
        return dim
    size = shape_in[dim]
    after = math.prod(shape_in[dim + 1 :])
    for i, s in enumerate(shape_out):
        if s == size and math.prod(shape_out[i + 1 :]) == after:
            return i
    before = math.prod(shape_in[:dim])
    for i, s in enumerate(shape_out):
        if s == size and math.prod(shape_out[:i]) == before:
            return i
    return None


def _carry(shape_in: Sequence[int], dim: int, shape_out: Sequence[int]) -> int | None:
    """The generic rule: same rank keeps the dim, otherwise follow it (right-align if wider)."""
    if len(shape_in) == len(shape_out):
        return dim
    followed = follow_dim(shape_in, dim, shape_out)
    if followed is None and len(shape_out) > len(shape_in):
        return dim + len(shape_out) - len(shape_in)
    return followed


def _int_arg(args: Sequence[Any], kwargs: Mapping[str, Any], index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


def _permutation(args: Sequence[Any], kwargs: Mapping[str, Any], ndim: int) -> list[int] | None:
    """Output dim i comes from input dim perm[i]."""
    if len(args) > 1 and isinstance(args[1], int):
        dims: Any = args[1:]
    else:
        dims = _int_arg(args, kwargs, 1, "dims")
    try:
        return [int(d) % ndim for d in dims]
    except (TypeError, ValueError):
        return None


def _transposed(dim: int, d0: Any, d1: Any, ndim: int) -> int:
    a, b = int(d0) % ndim, int(d1) % ndim
    return b if dim == a else a if dim == b else dim


def _moved(dim: int, source: Any, destination: Any, ndim: int) -> int:
    src = [int(s) % ndim for s in (source if isinstance(source, Sequence) else [source])]
    dst = [
        int(d) % ndim for d in (destination if isinstance(destination, Sequence) else [destination])
    ]
    order: list[int | None] = [None] * ndim
    for s, d in zip(src, dst, strict=False):
        order[d] = s
    rest = iter(i for i in range(ndim) if i not in src)
    perm = [o if o is not None else next(rest) for o in order]
    return perm.index(dim)


#: Matrix products: where their (left, right) operands sit in ``args``.
_MATMUL_OPERANDS: dict[Any, tuple[int, int]] = {
    torch.matmul: (0, 1),
    T.matmul: (0, 1),
    T.__matmul__: (0, 1),
    T.__rmatmul__: (1, 0),  # ``other @ self`` dispatched to self
    torch.mm: (0, 1),
    T.mm: (0, 1),
    torch.bmm: (0, 1),
    T.bmm: (0, 1),
    torch.addmm: (1, 2),
    torch.baddbmm: (1, 2),
}


def _weight_on_the_left(func: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool:
    """``W @ x`` with a parameter W (Mamba's ``dt_proj.weight @ x``, x of shape (B, D, L)):
    the features are W's rows, the output's dim -2, not its last dim (the sequence)."""
    operands = _MATMUL_OPERANDS.get(func)
    if operands is None:
        return False
    names = {0: "input", 1: "other"} if operands == (0, 1) else {1: "mat1", 2: "mat2", 0: ""}
    left = _int_arg(args, kwargs, operands[0], names[operands[0]])
    right = _int_arg(args, kwargs, operands[1], names[operands[1]])
    return isinstance(left, torch.nn.Parameter) and not isinstance(right, torch.nn.Parameter)


def _only_new_axes(index: Any) -> bool:
    """An index that keeps every value and only adds dims: ``None``, ``...``, ``:`` entries."""
    items = index if isinstance(index, tuple) else (index,)
    return all(
        i is None or i is Ellipsis or (isinstance(i, slice) and i == slice(None)) for i in items
    )


def _tensors(value: Any) -> Iterator[Tensor]:
    """Tensors of an argument or output, one level into lists/tuples (torch.cat, chunk)."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, Tensor):
                yield item


def _lookup(table: WeakTensorKeyDictionary, tensor: Tensor) -> Any:
    return table.get(tensor)  # type: ignore[no-untyped-call]


class AxisTracker:
    """Feature-dim tags of the tensors a discovery forward produced (weakly keyed)."""

    def __init__(self, on_gate: Callable[[Any], None]) -> None:
        self._tags: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        self._outputs: WeakTensorKeyDictionary = WeakTensorKeyDictionary()  # -> (site, numel)
        self._on_gate = on_gate

    def axis(self, tensor: Tensor) -> Axis | None:
        """The tag of ``tensor``, if a followed op produced it."""
        tag: Axis | None = _lookup(self._tags, tensor)
        return tag

    def mark_site_output(self, tensor: Tensor, site: Any) -> None:
        """``tensor`` is what ``site`` produced (for recognising gates)."""
        self._outputs[tensor] = (site, tensor.numel())

    def clear(self) -> None:
        self._tags = WeakTensorKeyDictionary()
        self._outputs = WeakTensorKeyDictionary()

    def observe(
        self, func: Any, args: Sequence[Any], kwargs: Mapping[str, Any] | None, out: Any
    ) -> None:
        """Tag the tensor(s) ``func(*args, **kwargs)`` returned."""
        outputs = list(_tensors(out))
        if not outputs:
            return
        kwargs = kwargs or {}
        if func in _MULTIPLY:
            self._check_gate(args)
        if args and isinstance(args[0], Tensor):
            origin = _lookup(self._outputs, args[0])
            if origin is not None and self._same_values(func, args, kwargs, outputs):
                for tensor in outputs:
                    self._outputs[tensor] = origin
        for tensor in outputs:
            tag = self._tag(func, args, kwargs, tensor)
            if tag is not None:
                self._tags[tensor] = tag
            elif tensor in self._tags:  # an in-place op whose result is no longer followed
                del self._tags[tensor]

    def _tag(
        self, func: Any, args: Sequence[Any], kwargs: Mapping[str, Any], out: Tensor
    ) -> Axis | None:
        ndim = out.dim()
        if ndim == 0 or func in _OPAQUE:
            return None
        name = LAST_DIM_PRODUCERS.get(func)
        if name is not None:
            if ndim >= 2 and _weight_on_the_left(func, args, kwargs):
                return Axis(ndim - 2, name)
            return Axis(ndim - 1, name)
        name = CHANNEL_PRODUCERS.get(func)
        if name is not None:
            return Axis(1, name) if ndim >= 2 else None
        first = args[0] if args else None
        if isinstance(first, Tensor):
            tag = _lookup(self._tags, first)
            if tag is not None:
                moved = self._moved(func, args, kwargs, first, tag.dim, out)
                if moved is not NotImplemented:
                    return None if moved is None else Axis(moved, tag.origin, tag.conflict)
        return self._carried(args, kwargs, out)

    def _moved(
        self,
        func: Any,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        first: Tensor,
        dim: int,
        out: Tensor,
    ) -> Any:
        """The dim after a layout op on ``first``; NotImplemented when ``func`` is none."""
        ndim = first.dim()
        try:
            if func in _PERMUTES:
                perm = _permutation(args, kwargs, ndim)
                return perm.index(dim) if perm is not None and dim in perm else None
            if func in _TRANSPOSES:
                d0 = _int_arg(args, kwargs, 1, "dim0")
                d1 = _int_arg(args, kwargs, 2, "dim1")
                return _transposed(dim, d0, d1, ndim)
            if func in _MOVEDIMS:
                src = _int_arg(args, kwargs, 1, "source")
                dst = _int_arg(args, kwargs, 2, "destination")
                return _moved(dim, src, dst, ndim)
            if func in _MATRIX_T:
                return ndim - 1 - dim if ndim == 2 else dim
            if getattr(func, "__self__", None) in _TRANSPOSE_PROPERTIES:
                if func.__self__ is T.T or func.__self__ is T.H:
                    return ndim - 1 - dim
                return _transposed(dim, -1, -2, ndim) if ndim >= 2 else dim
        except (TypeError, ValueError, IndexError):
            return None
        if func in _VIEWS:
            return follow_dim(first.shape, dim, out.shape)
        return NotImplemented

    def _carried(self, args: Sequence[Any], kwargs: Mapping[str, Any], out: Tensor) -> Axis | None:
        """The generic rule over every tagged tensor argument; the first wins a conflict."""
        found: list[tuple[int, Axis]] = []
        for value in (*args, *kwargs.values()):
            for tensor in _tensors(value):
                tag = _lookup(self._tags, tensor)
                if tag is None:
                    continue
                dim = _carry(tensor.shape, tag.dim, out.shape)
                if dim is not None:
                    found.append((dim, tag))
        if not found:
            return None
        dim, tag = found[0]
        others = {d for d, _ in found[1:] if d != dim}
        if others and tag.conflict is None:
            conflict = (
                f"inputs of one op put the features at dims {sorted({dim, *others})}; "
                f"kept dim {dim} of the first"
            )
            return Axis(dim, tag.origin, conflict)
        return Axis(dim, tag.origin, tag.conflict)

    @staticmethod
    def _same_values(
        func: Any, args: Sequence[Any], kwargs: Mapping[str, Any], outputs: list[Tensor]
    ) -> bool:
        """Still the site's output for gate detection: a layout op, or an elementwise op with
        scalars only (timm's ``F.relu6(x + 3) / 6`` hard sigmoid divides the site's output)."""
        if func in _SAME_VALUES:
            return True
        if func is T.__getitem__:  # ``dt[..., None]`` (Mamba2): an unsqueeze, every value kept
            return _only_new_axes(args[1] if len(args) > 1 else None)
        first: Tensor = args[0]
        if len(outputs) != 1 or outputs[0].shape != first.shape:
            return False
        others = (*args[1:], *kwargs.values())
        return not any(isinstance(v, Tensor) for v in others)

    def _check_gate(self, args: Sequence[Any]) -> None:
        if len(args) < 2:
            return
        left, right = args[0], args[1]
        for mine, other in ((left, right), (right, left)):
            if not (isinstance(mine, Tensor) and isinstance(other, Tensor)):
                continue
            origin = _lookup(self._outputs, mine)
            if origin is None:
                continue
            site, numel = origin
            if numel < other.numel() or site.activation in GATING_ACTIVATIONS:
                self._on_gate(site)


__all__ = [
    "CHANNEL_PRODUCERS",
    "GATING_ACTIVATIONS",
    "LAST_DIM_PRODUCERS",
    "Axis",
    "AxisTracker",
    "follow_dim",
]
