"""The eager CPU fast path of Bernstein: bernstein_kernel.c behind the ``neurodiag::bernstein`` and
``neurodiag::bernstein_backward`` ops (``torch.library``, fake implementations: they compose with
torch.compile, dispatch modes, ``opcheck``; autograd is :class:`BernsteinFunction`), one pass each
way where the eager reference makes ~70. Without the library (no compiler, ``NEURODIAG_NATIVE=0``,
a failed build: :func:`status`) or for inputs it does not take, the ops compute the reference.
Built, cached and trust-checked by :mod:`neurodiag.native_build`."""

from __future__ import annotations

import ctypes
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

import neurodiag.native_build as native_build
from neurodiag.activations import bernstein_reference as ref

SOURCE = Path(__file__).with_name("bernstein_kernel.c")
#: runs the kernels' parts (a module name: tests count the C runs through it)
_map = native_build.map_parts


class Kernels:
    """The C entry points; sizes as c_int64 (int64_t: 64-bit everywhere, unlike long)."""

    def __init__(self, lib: ctypes.CDLL, path: Path) -> None:
        p, i64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
        lib.bern_lanes.restype = i32
        self.lanes: int = lib.bern_lanes()  # the table's columns are padded to a multiple
        self.path = path
        self.value, self.backward = lib.bern_value, lib.bern_backward
        self.table, self.grads = lib.bern_table, lib.bern_grads
        self.value.argtypes = [p, p, i64, i64, i64, p, i64, i32, f32, f32]
        self.backward.argtypes = [p, p, p, p, i64, i64, i64, p, i64, i32, f32, f32]
        self.table.argtypes = [p, p, i64, i64, i32, p, p]
        self.grads.argtypes = [p, i64, i64, i32, p, p, p]
        self.value.restype = self.backward.restype = self.table.restype = self.grads.restype = None


#: The loaded kernels (call it), or None: switched off, or the build or load failed (status()).
kernels = native_build.NativeLibrary(SOURCE, "bernstein", Kernels)


def status() -> str:
    """One line: where the kernels were loaded from, or why they are not in use."""
    return kernels.status("native kernels")


def fits(x: Tensor, c0: Tensor, incs: Tensor) -> bool:
    """Whether the C kernels take these tensors: contiguous float32 on CPU, degree ≤ 16."""
    return incs.shape[-1] <= ref.FLOAT32_MAX_DEGREE and all(
        t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous()
        for t in (x, c0, incs)
    )


def _layout(x: Tensor, feature_dim: int, shared: bool) -> tuple[int, int, int]:
    """(A, F, B): x viewed as (A, F, B) has its feature dim in the middle."""
    if x.ndim == 0 or (shared and x.ndim == 1):
        return 1, 1, x.numel()
    fd = 0 if x.ndim == 1 else feature_dim % x.ndim
    return math.prod(x.shape[:fd]), x.shape[fd], math.prod(x.shape[fd + 1 :])


def _table_layout(x: Tensor, c0: Tensor, incs: Tensor, native: bool
                  ) -> tuple[Kernels | None, tuple[int, int], torch.dtype]:  # fmt: skip
    """The kernels if asked for and they take x (else None), the shape and dtype of the table."""
    lib = kernels() if native and fits(x, c0, incs) else None
    rows, n = incs.shape
    if lib is None:
        return None, (2 * n + 3, rows), ref.compute_dtype(x.dtype, n, x.device)
    return lib, (2 * n + 3, 1 if rows == 1 else -(-rows // lib.lanes) * lib.lanes), torch.float32


_LIB = torch.library.Library("neurodiag", "DEF")  # type: ignore[no-untyped-call]
_LIB.define("bernstein(Tensor x, Tensor c0, Tensor incs, Tensor conv, float lo, float hi, int fd, "
            "bool native) -> (Tensor, Tensor)")  # type: ignore[no-untyped-call]  # fmt: skip
_LIB.define("bernstein_backward(Tensor g, Tensor x, Tensor c0, Tensor incs, Tensor conv, Tensor "
            "table, float lo, float hi, int fd, bool native, bool need_x, bool need_params) -> "
            "(Tensor, Tensor, Tensor)")  # type: ignore[no-untyped-call]  # fmt: skip


def _value(
    x: Tensor, c0: Tensor, incs: Tensor, conv: Tensor, lo: float, hi: float, fd: int, native: bool
) -> tuple[Tensor, Tensor]:
    """(σ(x), its table) for c0, increments incs, conversion matrix conv, range [lo, hi], feature
    dim fd: one C pass (with ``native``, where the kernels take x), else the reference."""
    scale, shift = ref.scale_shift(lo, hi)
    lib, (_, ld), dtype = _table_layout(x, c0, incs, native)
    if lib is None:
        table = ref.coefficient_table(c0, incs, conv, dtype)
        return ref.value(x.to(dtype), table, scale, shift, fd).to(x.dtype), table
    (rows, n), table = incs.shape, torch.empty(2 * incs.shape[1] + 3, ld)
    lib.table(c0.data_ptr(), incs.data_ptr(), rows, ld, n, conv.data_ptr(), table.data_ptr())
    a, f, b = _layout(x, fd, table.shape[1] == 1)
    out = torch.empty_like(x)

    def run(_: int, first: int, last: int) -> None:
        off = first * f * b * 4  # float32 bytes
        lib.value(x.data_ptr() + off, out.data_ptr() + off, last - first, f, b, table.data_ptr(),
                  table.shape[1], incs.shape[1], scale, shift)  # fmt: skip

    _map(run, native_build.parts(a, x.numel()))
    return out, table


def _backward(
    g: Tensor, x: Tensor, c0: Tensor, incs: Tensor, conv: Tensor, table: Tensor, lo: float,
    hi: float, fd: int, native: bool, need_x: bool, need_params: bool
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """(∂L/∂x, ∂L/∂c0, ∂L/∂incs) of :func:`_value` from its ``table`` (empty where not needed):
    ∂L/∂x and the moments in one C pass (else the reference), then the parameter gradients."""
    scale, shift = ref.scale_shift(lo, hi)
    lib = _table_layout(x, c0, incs, native)[0]
    grads = [x.new_empty(0), x.new_empty(0), x.new_empty(0)]
    rows, n = incs.shape
    if lib is None:
        dtype = table.dtype
        gx, mom = ref.backward(
            g.to(dtype), x.to(dtype), table, scale, shift, fd, need_x, need_params
        )
        grads[0] = grads[0] if gx is None else gx.to(x.dtype)
    else:
        a, f, b = _layout(x, fd, rows == 1)
        g = g.to(torch.float32).contiguous()
        parts = native_build.parts(a, x.numel())
        moms = torch.zeros(len(parts), n + 3, table.shape[1], dtype=torch.float64)
        if need_x:
            grads[0] = torch.empty_like(x)

        def run(k: int, first: int, last: int) -> None:
            off, ld = first * f * b * 4, table.shape[1]
            lib.backward(x.data_ptr() + off, g.data_ptr() + off,
                         grads[0].data_ptr() + off if need_x else None,
                         moms[k].data_ptr() if need_params else None,
                         last - first, f, b, table.data_ptr(), ld, n, scale, shift)  # fmt: skip

        _map(run, parts)
        if need_params:
            total = moms.sum(0) if len(parts) > 1 else moms[0]
            grads[1:] = [torch.empty(rows), torch.empty(rows, n)]
            lib.grads(total.data_ptr(), rows, table.shape[1], n, conv.data_ptr(),
                      grads[1].data_ptr(), grads[2].data_ptr())  # fmt: skip
        mom = None
    if mom is not None:
        gc0, ginc = ref.parameter_grads(mom, conv)
        grads[1:] = [gc0.to(c0.dtype), ginc.to(incs.dtype).contiguous()]
    return grads[0], grads[1], grads[2]


_LIB.impl("bernstein", _value, "CompositeExplicitAutograd")  # type: ignore[no-untyped-call]
_LIB.impl("bernstein_backward", _backward, "CompositeExplicitAutograd")  # type: ignore[no-untyped-call]


@torch.library.register_fake("neurodiag::bernstein", lib=_LIB)  # type: ignore[untyped-decorator]
def _(x: Tensor, c0: Tensor, incs: Tensor, *args: Any) -> tuple[Tensor, Tensor]:
    _, shape, dtype = _table_layout(x, c0, incs, args[-1])
    return torch.empty_like(x), x.new_empty(shape, dtype=dtype)


@torch.library.register_fake("neurodiag::bernstein_backward", lib=_LIB)  # type: ignore[untyped-decorator]
def _(g: Tensor, x: Tensor, c0: Tensor, incs: Tensor, *args: Any) -> tuple[Tensor, ...]:
    need_x, need_params = args[-2:]
    like = [x if need_x else None, c0 if need_params else None, incs if need_params else None]
    return tuple(x.new_empty(0) if t is None else torch.empty_like(t) for t in like)


class BernsteinFunction(torch.autograd.Function):
    """σ with autograd: forward and backward are the two ops (registered autograd cost more)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, c0: Tensor, incs: Tensor, conv: Tensor, *args: Any) -> Tensor:
        out, table = torch.ops.neurodiag.bernstein.default(x, c0, incs, conv, *args)
        ctx.save_for_backward(x, c0, incs, conv, table)
        ctx.args = args  # lo, hi, fd, native
        return out  # type: ignore[no-any-return]

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        need = ctx.needs_input_grad[:3]
        back = torch.ops.neurodiag.bernstein_backward.default
        grads = back(g, *ctx.saved_tensors, *ctx.args, need[0], need[1] or need[2])
        return *[gr if wanted else None for gr, wanted in zip(grads, need)], *[None] * 5
