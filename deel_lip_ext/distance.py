"""The chunked l_p-distance op of the l_inf-dist layers (Zhang et al., ICML 2021 and ICLR 2022).

A unit computes u(x) = ||x - w||_p + b. A naive layer materializes a
(batch, inputs, units) difference tensor (54 GB for one CIFAR layer of the
papers). `linf_distance` instead loops over chunks of output units and has a
custom gradient that keeps only the inputs, the weights and the outputs: the
backward pass recomputes each chunk. On TensorFlow the loops are compiled by
XLA (`deel_lip_ext._xla`), which runs them in place and fuses each chunk's
differences into its reductions. `interval_distance_bounds` bounds the op
over a box (interval bound propagation); `naive_distance` is the reference.
The layers are in `deel_lip_ext.layers.linf`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import keras
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext._validation import check_int
from deel_lip_ext._xla import compiled_by_xla

__all__ = [
    "NOMINAL_BATCH",
    "check_p",
    "automatic_chunk_size",
    "linf_distance",
    "naive_distance",
    "interval_distance_bounds",
]

# Smallest chunk intermediate (elements) of the automatic chunk size: below it the loop's per-chunk
# overhead shows (1 unit per chunk at 784 -> 512, batch 512, p = 8 ran 1.4x slower than 4).
_MIN_CHUNK_ELEMENTS = 2**20
# Batch size assumed for the automatic chunk size when the batch dimension is unknown.
NOMINAL_BATCH = 512
_TINY = 1e-30


def check_p(p: float):
    """Return the norm order `p` as a float (possibly `inf`); raise `ValueError` unless 1 <= p <= inf.

    Args:
        p: a real number >= 1, `math.inf`, or the string "inf" / "infinity" (any case).
    """
    if isinstance(p, str) and p.strip().lower() in ("inf", "infinity"):
        return math.inf
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or math.isnan(float(p)) or p < 1:
        raise ValueError(f"p must be a number >= 1 or float('inf') (or 'inf'), got {p!r}.")
    return float(p)


def _static_p(p):
    """`p` as a Python float when it is known before tracing, else None."""
    if isinstance(p, (numbers.Real, str)):
        return check_p(p)
    return None


def _check_chunk_size(chunk_size):
    return check_int(chunk_size, "chunk_size", allow_none=True)


def automatic_chunk_size(rows: int, input_dim: int, units: int) -> int:
    """Units per chunk so that a (rows, chunk, input_dim) intermediate is no larger than the (rows, units) output.

    Or about 2**20 elements (4 MB) when the output is smaller, and at least
    one unit (whose intermediate exceeds the output when input_dim > units;
    XLA fuses it into its reduction rather than storing it). A divisor of
    `units` is preferred when it is at least half that size.

    Args:
        rows: the batch size (batch x positions for a convolution); None or unknown counts as 512.
        input_dim: length of each input row (the kernel's first dimension).
        units: number of output units (the kernel's second dimension).

    Returns:
        The chunk size, an int in [1, units].
    """
    rows = rows if isinstance(rows, int) and rows > 0 else NOMINAL_BATCH
    budget = max(rows * units, _MIN_CHUNK_ELEMENTS)
    size = min(units, max(1, budget // max(1, rows * input_dim)))
    # A divisor of units, when one is close, saves padding copies of the kernel and the outputs.
    divisor = next(d for d in range(size, 0, -1) if units % d == 0)
    return divisor if 2 * divisor >= size else size


class _ChunkPlan(NamedTuple):
    """Output units split into `count` chunks of `size` (`padded` = count * size >= units).

    A tuple of ints, so that compiled functions take it as a compile-time constant.
    """

    units: int
    size: int

    @classmethod
    def make(cls, rows, input_dim, units, chunk_size):
        if chunk_size is None:
            chunk_size = automatic_chunk_size(rows, input_dim, units)
        return cls(units, min(chunk_size, units))

    @property
    def count(self):
        return -(-self.units // self.size)

    @property
    def padded(self):
        return self.count * self.size

    def pad(self, tensor, repeat):
        """Extend the units axis (1) to `padded`: with copies of the first units (valid values) or zeros."""
        extra = self.padded - self.units
        if not extra:
            return tensor
        filler = tensor[:, :extra] if repeat else ops.zeros_like(tensor[:, :extra])
        return ops.concatenate([tensor, filler], axis=1)

    def unpad(self, tensor):
        return tensor if self.padded == self.units else tensor[:, : self.units]

    def run(self, body, init):
        """carry = body(start, carry) for the first unit `start` of every chunk, one chunk after the other.

        A loop rather than unrolled chunks, run inside `compiled_by_xla`
        functions: XLA runs it sequentially and updates the output buffers in
        place. (TensorFlow's graph runtime would run up to 10 iterations at
        once and copy the whole buffer at every slice update, quadratic in
        the number of units; XLA also merges unrolled slices back into the
        full (batch, units, inputs) tensor.)
        """
        if self.count == 1:
            return body(0, init)
        return ops.fori_loop(0, self.count, lambda index, carry: body(index * self.size, carry), init)


def _columns(tensor, start, size):
    return ops.slice(tensor, (0, start), (ops.shape(tensor)[0], size))


def _write_columns(buffer, start, piece):
    return ops.slice_update(buffer, (0, start), piece)


def _norm_over_inputs(magnitudes, p, power=None):
    """||.||_p over the last axis of nonnegative `magnitudes` (batch, chunk, inputs), max-rescaled for large p."""
    peak = ops.max(magnitudes, axis=-1)
    if isinstance(p, float) and p == math.inf:
        return peak
    # The sum is >= 1 whenever peak > 0, so (|d| / peak) ** p never overflows.
    scaled = ops.divide(magnitudes, ops.expand_dims(ops.maximum(peak, _TINY), -1))
    total = ops.sum((power or _static_power)(scaled, p), axis=-1)
    return ops.multiply(peak, ops.power(total, ops.divide(1.0, p)))


# The papers' first-phase p (held for a whole phase of training): a variable p equal to it takes a
# repeated-squaring branch, 1.5 (graph) to 2.4 (XLA) times faster than exp/log on CPU.
_SQUARING_P = 8.0
# Python-number exponents that are integers below this use repeated squaring.
_MAX_SQUARING_EXPONENT = 64


def _log_power(ratio, exponent):
    """ratio ** exponent for ratio in [0, 1], exponent >= 0, as exp(exponent * log(ratio)).

    2 to 3 times faster than `ops.power` on CPU. Clamping the ratio at a
    tiny value keeps 0 * log(0) from producing NaN (0 ** 0 = 1) and changes
    the result by < 1e-30.
    """
    return ops.exp(exponent * ops.log(ops.maximum(ratio, _TINY)))


def _static_power(ratio, exponent):
    """ratio ** exponent for a Python-number exponent: repeated squaring when it is a small integer."""
    if float(exponent).is_integer() and 0 <= exponent < _MAX_SQUARING_EXPONENT:
        result, square, remaining = None, ratio, int(exponent)
        while remaining:
            if remaining & 1:
                result = square if result is None else result * square
            remaining >>= 1
            if remaining:
                square = square * square
        return ops.ones_like(ratio) if result is None else result
    return _log_power(ratio, exponent)


def _differences(x, centres):
    """x[b, j] - c[o, j]: (batch, units, inputs).

    Centres as rows (units, inputs), inputs last, so that every reduction
    and every chunk slice reads contiguous memory. (Slicing chunks of
    columns of the (inputs, units) kernel ran 8 times slower under XLA.)
    """
    return ops.subtract(ops.expand_dims(x, 1), ops.expand_dims(centres, 0))


def _centres(kernel, plan):
    """The units' centres as rows (padded units, inputs)."""
    return ops.transpose(plan.pad(kernel, repeat=True))


def _rows(tensor, start, size):
    return ops.slice(tensor, (start, 0), (size, ops.shape(tensor)[1]))


def _write_rows(buffer, start, piece):
    return ops.slice_update(buffer, (start, 0), piece)


def _output_buffer(x, plan):
    return ops.zeros((ops.shape(x)[0], plan.padded), dtype=x.dtype)


def _forward(x, kernel, p, plan, power):
    """y (batch, units), chunk by chunk; at p = inf one max reduction per chunk."""
    centres = _centres(kernel, plan)

    def body(start, y):
        magnitudes = ops.abs(_differences(x, _rows(centres, start, plan.size)))
        return _write_columns(y, start, _norm_over_inputs(magnitudes, p, power))

    return plan.unpad(plan.run(body, _output_buffer(x, plan)))


def _backward(x, kernel, y, upstream, plan, slope):
    """(d/dx, d/dkernel) of sum(upstream * y), recomputing each chunk of differences d = x[b, j] - w[j, o].

    `slope(d, y)` is d y[b, o] / d x[b, j] for a chunk; d/dw is its negative.
    """
    centres, y = _centres(kernel, plan), plan.pad(y, repeat=True)
    # Padded units get no upstream gradient, so they add nothing.
    upstream = plan.pad(upstream, repeat=False)

    def body(start, carry):
        grad_x, grad_centres = carry
        diff = _differences(x, _rows(centres, start, plan.size))
        weighted = slope(diff, ops.expand_dims(_columns(y, start, plan.size), -1)) * ops.expand_dims(
            _columns(upstream, start, plan.size), -1
        )
        return grad_x + ops.sum(weighted, axis=1), _write_rows(grad_centres, start, -ops.sum(weighted, axis=0))

    grad_x, grad_centres = plan.run(body, (ops.zeros_like(x), ops.zeros_like(centres)))
    return grad_x, plan.unpad(ops.transpose(grad_centres))


def _max_norm_slope(diff, y):
    """sign(d) at the coordinate where |d| reaches the max norm y, 0 elsewhere.

    Comparing with the stored output is a cheap elementwise pass; an argmax
    in the forward pass ran 4x slower than the max on CPU. A tie (two
    coordinates exactly at the max) gives each the full slope, where
    autodiff of a max would split it.
    """
    return ops.where(ops.equal(ops.abs(diff), y), ops.sign(diff), ops.zeros_like(diff))


def _p_norm_slope(p, power):
    """sign(d) (|d| / y) ** (p - 1)."""

    def slope(diff, y):
        return ops.sign(diff) * power(ops.abs(diff) / ops.maximum(y, _TINY), p - 1.0)

    return slope


def _by_norm_order(p, infinite, squaring, general):
    """Run one of three thunks according to a tensor p: inf, `_SQUARING_P`, any other value."""
    return ops.cond(ops.isinf(p), infinite, lambda: ops.cond(ops.equal(p, _SQUARING_P), squaring, general))


@compiled_by_xla
def _compiled_forward(x, kernel, p_tensor, static_p, plan):
    if static_p is not None:
        return _forward(x, kernel, static_p, plan, _static_power)
    return _by_norm_order(
        p_tensor,
        lambda: _forward(x, kernel, math.inf, plan, _static_power),
        lambda: _forward(x, kernel, _SQUARING_P, plan, _static_power),
        lambda: _forward(x, kernel, p_tensor, plan, _log_power),
    )


@compiled_by_xla
def _compiled_backward(x, kernel, p_tensor, y, upstream, static_p, plan):
    def backward(p, power):
        slope = _max_norm_slope if isinstance(p, float) and p == math.inf else _p_norm_slope(p, power)
        return lambda: _backward(x, kernel, y, upstream, plan, slope)

    if static_p is not None:
        return backward(static_p, _static_power)()
    return _by_norm_order(
        p_tensor, backward(math.inf, None), backward(_SQUARING_P, _static_power), backward(p_tensor, _log_power)
    )


def _working_dtype(dtype: str) -> str:
    """float32 for half-precision inputs (float16 cannot hold `_TINY`, and its sums of p-th powers overflow)."""
    return "float32" if keras.backend.standardize_dtype(dtype) in ("float16", "bfloat16") else dtype


def linf_distance(x: ArrayLike, kernel: ArrayLike, p: float = math.inf, chunk_size: int | None = None) -> Any:
    """Memory-efficient y[b, o] = ||x[b, :] - kernel[:, o]||_p with a custom gradient.

    Args:
        x: inputs, shape (batch, input_dim).
        kernel: unit centres, shape (input_dim, units) (column o is unit o's w).
        p: norm order, a Python number in [1, inf] or a scalar tensor (e.g. a
            variable changed during training; inf then selects the max norm at
            run time).
        chunk_size: output units per chunk; None: `automatic_chunk_size`
            (a chunk intermediate no larger than the output, or 4 MB).

    Returns:
        Tensor of shape (batch, units), of x's dtype; half-precision inputs
        (mixed precision) are computed in float32. Peak memory is O(batch * units) plus
        one chunk, in the forward and in the backward pass. On TensorFlow the
        chunk loops are compiled by XLA (one compilation per input shape).

    Examples:
        >>> y = linf_distance(ops.ones((4, 3)), ops.zeros((3, 5)), p=8.0)
    """
    chunk_size = _check_chunk_size(chunk_size)
    x = ops.convert_to_tensor(x)
    output_dtype, dtype = x.dtype, _working_dtype(x.dtype)
    # Casts outside the custom gradient: autodiff casts the gradients back to the callers' dtypes.
    x, kernel = ops.cast(x, dtype), ops.cast(kernel, dtype)
    plan = _ChunkPlan.make(x.shape[0], x.shape[1], kernel.shape[1], chunk_size)
    static_p = _static_p(p)
    p_tensor = ops.cast(p if static_p is None else static_p, dtype)

    @ops.custom_gradient
    def distance(x, kernel, p_tensor):
        # The gradient is `grad`: hiding the inputs from autodiff keeps TensorFlow from differentiating
        # the compiled loop (whose in-place updates have no gradient) when a tape watches them.
        x, kernel, p_tensor = (ops.stop_gradient(value) for value in (x, kernel, p_tensor))
        y = _compiled_forward(x, kernel, p_tensor, static_p, plan)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            upstream = ops.stop_gradient(upstream)
            grad_x, grad_kernel = _compiled_backward(x, kernel, p_tensor, y, upstream, static_p, plan)
            return grad_x, grad_kernel, ops.zeros_like(p_tensor)

        return y, grad

    return ops.cast(distance(x, kernel, p_tensor), output_dtype)


def naive_distance(x: ArrayLike, kernel: ArrayLike, p: float = math.inf) -> Any:
    """Reference ||x[b] - kernel[:, o]||_p by broadcasting (batch, units, input_dim) and plain autodiff.

    Exact but memory-hungry; used to check `linf_distance` and as the
    benchmark baseline. The rescaling peak is a constant for autodiff, which
    is exact since the rescaled expression does not depend on it.

    Args:
        x: inputs, shape (batch, input_dim).
        kernel: unit centres, shape (input_dim, units) (column o is unit o's w).
        p: norm order, a Python number in [1, inf] (see `check_p`).

    Returns:
        Tensor of shape (batch, units).
    """
    p = check_p(p)
    magnitudes = ops.abs(_differences(x, ops.transpose(kernel)))
    if p == math.inf:
        return ops.max(magnitudes, axis=-1)
    peak = ops.stop_gradient(ops.max(magnitudes, axis=-1))
    scaled = ops.divide(magnitudes, ops.expand_dims(ops.maximum(peak, _TINY), -1))
    return peak * ops.power(ops.sum(ops.power(scaled, p), axis=-1), 1.0 / p)


def interval_distance_bounds(
    lower: ArrayLike, upper: ArrayLike, kernel: ArrayLike, p: float = math.inf, chunk_size: int | None = None
) -> tuple[Any, Any]:
    """Bounds of ||x - kernel[:, o]||_p over the box lower <= x <= upper (no gradient).

    The norm grows with every |x_j - w_j|, so the bounds are the norms of the
    largest and of the smallest coordinate-wise distances:
    max(|l - w|, |u - w|) and dist(w, [l, u]) = max(l - w, w - u, 0).

    Args:
        lower: lower corners of the input boxes, shape (batch, input_dim).
        upper: upper corners of the input boxes, shape (batch, input_dim), >= `lower`.
        kernel: unit centres, shape (input_dim, units) (column o is unit o's w).
        p: norm order, a Python number in [1, inf] (see `check_p`).
        chunk_size: output units per chunk; None: `automatic_chunk_size`.

    Returns:
        (lower_bound, upper_bound), each of shape (batch, units).
    """
    p = check_p(p)
    lower = ops.convert_to_tensor(lower)
    output_dtype, dtype = lower.dtype, _working_dtype(lower.dtype)
    lower, upper, kernel = (ops.stop_gradient(ops.cast(value, dtype)) for value in (lower, upper, kernel))
    plan = _ChunkPlan.make(lower.shape[0], lower.shape[1], kernel.shape[1], _check_chunk_size(chunk_size))
    return tuple(ops.cast(bound, output_dtype) for bound in _interval_bounds(lower, upper, kernel, p, plan))


@compiled_by_xla
def _interval_bounds(lower, upper, kernel, p, plan):
    centres = _centres(kernel, plan)

    def body(start, carry):
        low, high = carry
        chunk = _rows(centres, start, plan.size)
        below, above = _differences(lower, chunk), _differences(upper, chunk)
        farthest = ops.maximum(ops.abs(below), ops.abs(above))
        nearest = ops.maximum(ops.maximum(below, -above), 0.0)
        return (
            _write_columns(low, start, _norm_over_inputs(nearest, p)),
            _write_columns(high, start, _norm_over_inputs(farthest, p)),
        )

    low, high = plan.run(body, (_output_buffer(lower, plan), _output_buffer(lower, plan)))
    return plan.unpad(low), plan.unpad(high)
