"""l_inf-distance layers (Zhang et al., ICML 2021 and ICLR 2022).

A unit computes u(x) = ||x - w||_p + b. At p = inf every unit, hence every
layer and every network made of them, is 1-Lipschitz for the l_inf norm, so
a logit margin certifies l_inf robustness with one forward pass. Training
relaxes p (8 -> 1000 -> inf, see `deel_lip_ext.linf.LpScheduler`) because
the gradient of the max norm is one-hot.

A naive layer materializes a (batch, inputs, units) difference tensor (54 GB
for one CIFAR layer of the papers). `linf_distance` instead loops over
chunks of output units and has a custom gradient that keeps only the inputs,
the weights and the outputs: the backward pass recomputes each chunk. On
TensorFlow the loops are compiled by XLA, which runs them in place and
fuses each chunk's differences into its reductions.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple
from typing import Any

import keras
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext.layers._xla import compiled_by_xla
from deel_lip_ext.layers.base import LipschitzBounded

__all__ = [
    "automatic_chunk_size",
    "linf_distance",
    "naive_distance",
    "interval_distance_bounds",
    "LInfDistDense",
    "LInfDistConv2D",
    "LogitScale",
]

# Smallest chunk intermediate (elements) of the automatic chunk size: below it the loop's per-chunk
# overhead shows (1 unit per chunk at 784 -> 512, batch 512, p = 8 ran 1.4x slower than 4).
_MIN_CHUNK_ELEMENTS = 2**20
# Batch size assumed for the automatic chunk size when the batch dimension is unknown.
_NOMINAL_BATCH = 512
_TINY = 1e-30


def check_p(p: float):
    """Return the norm order `p` as a float (possibly `inf`); raise `ValueError` unless 1 <= p <= inf."""
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
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"chunk_size must be None (automatic) or a positive integer, got {chunk_size!r}.")
    return int(chunk_size)


def automatic_chunk_size(rows: int, input_dim: int, units: int):
    """Units per chunk so that a (rows, chunk, input_dim) intermediate is no larger than the (rows, units) output.

    Or about 2**20 elements (4 MB) when the output is smaller, and at least
    one unit (whose intermediate exceeds the output when input_dim > units;
    XLA fuses it into its reduction rather than storing it). A divisor of
    `units` is preferred when it is at least half that size.
    `rows` is the batch size (batch x positions for a convolution); None or
    unknown counts as 512.
    """
    rows = rows if isinstance(rows, int) and rows > 0 else _NOMINAL_BATCH
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


def naive_distance(x: ArrayLike, kernel: ArrayLike, p: float = math.inf):
    """Reference ||x[b] - kernel[:, o]||_p by broadcasting (batch, units, input_dim) and plain autodiff.

    Exact but memory-hungry; used to check `linf_distance` and as the
    benchmark baseline. The rescaling peak is a constant for autodiff, which
    is exact since the rescaled expression does not depend on it.
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


class _LInfDistBase(LipschitzBounded, keras.layers.Layer):
    """Shared machinery: norm order, mean shift with a running mean, bias, negation, identity init.

    Subclasses provide `_rows(inputs)` (inputs as (rows, input_dim) plus the
    output shape), `_kernel_matrix()` and `_identity_positions()`.
    """

    def __init__(
        self,
        units: int,
        p: float = math.inf,
        mean_shift: bool = True,
        use_bias: bool | None = None,
        identity_init: bool = True,
        identity_value: float = 10.0,
        negate: bool = False,
        momentum: float = 0.9,
        kernel_initializer: str | keras.initializers.Initializer | None = None,
        bias_initializer: str | keras.initializers.Initializer = "zeros",
        chunk_size: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(units, bool) or not isinstance(units, numbers.Integral) or units < 1:
            raise ValueError(f"units must be a positive integer, got {units!r}.")
        if not isinstance(identity_value, numbers.Real) or not math.isfinite(identity_value) or identity_value < 0:
            raise ValueError(f"identity_value must be a finite number >= 0, got {identity_value!r}.")
        if not isinstance(momentum, numbers.Real) or not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}.")
        for name, flag in (("mean_shift", mean_shift), ("identity_init", identity_init), ("negate", negate)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, got {flag!r}.")
        if use_bias is not None and not isinstance(use_bias, bool):
            raise TypeError(f"use_bias must be None (= not mean_shift), True or False, got {use_bias!r}.")
        self.units = int(units)
        self._p = check_p(p)
        self.mean_shift = mean_shift
        self.use_bias = (not mean_shift) if use_bias is None else use_bias
        self.identity_init = identity_init
        self.identity_value = float(identity_value)
        self.negate = negate
        self.momentum = float(momentum)
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or keras.initializers.RandomNormal(mean=0.0, stddev=1.0)
        )
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.chunk_size = _check_chunk_size(chunk_size)

    @property
    def p(self):
        """Current norm order (a float, possibly inf); assign to change it, also during training."""
        if self.built:
            return float(ops.convert_to_numpy(self.p_variable))
        return self._p

    @p.setter
    def p(self, value):
        self._p = check_p(value)
        if self.built:
            self.p_variable.assign(self._p)

    def _build_common(self, kernel_shape):
        self.kernel = self.add_weight(name="kernel", shape=kernel_shape, initializer=self.kernel_initializer)
        if self.identity_init:
            positions = self._identity_positions()
            if positions is not None:
                self.kernel.assign(ops.where(positions, -self.identity_value, self.kernel))
        self.bias = (
            self.add_weight(name="bias", shape=(self.units,), initializer=self.bias_initializer)
            if self.use_bias
            else None
        )
        self.moving_mean = (
            self.add_weight(name="moving_mean", shape=(self.units,), initializer="zeros", trainable=False)
            if self.mean_shift
            else None
        )
        # A variable, so a compiled training step sees the schedule's new p without retracing.
        self.p_variable = self.add_weight(
            name="p", shape=(), initializer=keras.initializers.Constant(self._p), trainable=False
        )

    def _finish(self, distances, training):
        """Mean shift (batch mean while training, running mean otherwise), bias and negation."""
        if self.mean_shift:
            if training:
                batch_mean = ops.mean(distances, axis=tuple(range(len(distances.shape) - 1)))
                self.moving_mean.assign(
                    self.momentum * self.moving_mean + (1.0 - self.momentum) * ops.stop_gradient(batch_mean)
                )
                distances = distances - batch_mean
            else:
                distances = distances - ops.cast(self.moving_mean, distances.dtype)
        if self.use_bias:
            distances = distances + ops.cast(self.bias, distances.dtype)
        return -distances if self.negate else distances

    def call(self, inputs, training=None):
        rows, output_shape = self._rows(inputs)
        distances = linf_distance(rows, self._kernel_matrix(), self.p_variable, self._chunk_size_for(inputs))
        return self._finish(ops.reshape(distances, output_shape), training)

    def _chunk_size_for(self, inputs):
        """The chunk size, from the static rows of the distance computation when automatic."""
        if self.chunk_size is not None:
            return self.chunk_size
        rows, input_dim = self._row_count(inputs.shape)
        return automatic_chunk_size(rows, input_dim, self.units)

    def interval_bounds(self, lower, upper):
        """Inference-mode output bounds over the input box [lower, upper] (interval bound propagation)."""
        lower_rows, output_shape = self._rows(lower)
        upper_rows, _ = self._rows(upper)
        low, high = interval_distance_bounds(
            lower_rows, upper_rows, self._kernel_matrix(), self.p, self._chunk_size_for(lower)
        )
        low = self._finish(ops.reshape(low, output_shape), training=False)
        high = self._finish(ops.reshape(high, output_shape), training=False)
        return (high, low) if self.negate else (low, high)

    def _lipschitz_constant(self, norm, input_shape):
        if norm == "l2":
            raise ValueError(
                f"layer {self.name!r} ({type(self).__name__}) has no L2 bound in this library: l_inf-dist layers are "
                "certified in l_inf (norm='linf', deel_lip_ext.linf.linf_lipschitz_bound)."
            )
        if not math.isinf(self.p):
            raise ValueError(
                f"layer {self.name!r} has p = {self.p}: only p = inf is 1-Lipschitz in l_inf "
                "(call deel_lip_ext.linf.set_p(model, float('inf')) before certifying)."
            )
        # In inference each output is +-(||patch - w_o||_inf - running mean + b_o): 1-Lipschitz in l_inf.
        return 1.0

    def vanilla_export(self):
        """A copy of the layer with the same weights (there is no plain Keras equivalent)."""
        clone = self.__class__.from_config(self.get_config())
        clone.build(self._built_input_shape)
        clone.set_weights(self.get_weights())
        return [clone]

    def get_config(self):
        config = super().get_config()
        p = self.p
        config.update(
            {
                "units": self.units,
                "p": "inf" if p == math.inf else p,
                "mean_shift": self.mean_shift,
                "use_bias": self.use_bias,
                "identity_init": self.identity_init,
                "identity_value": self.identity_value,
                "negate": self.negate,
                "momentum": self.momentum,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "chunk_size": self.chunk_size,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class LInfDistDense(_LInfDistBase):
    """Dense layer of l_p-distance units: y_o = ||x - w_o||_p (+ b_o), 1-Lipschitz in l_inf at p = inf.

    Hidden layers use `mean_shift=True` (subtract the batch mean while
    training, a running mean at inference: a constant shift, so still
    1-Lipschitz) and no bias; the papers' last layer has a bias, no mean
    shift and `negate=True` (logits are large near a class centre).

    Args:
        units: number of output units.
        p: norm order in [1, inf]; assign `layer.p` to change it (see
            `deel_lip_ext.linf.LpScheduler`). Only p = inf is 1-Lipschitz in
            l_inf; a finite p has constant input_dim ** (1 / p).
        mean_shift: subtract the per-unit batch mean (training) / running
            mean (inference).
        use_bias: add a bias; None means `not mean_shift`.
        identity_init: when input_dim <= units, set w[i mod input_dim, i] =
            -identity_value, so that unit i starts as x_(i mod input_dim) + 10
            and deep stacks start near the identity (the papers' init).
        identity_value: the value above (10 in the papers).
        negate: return the negated output.
        momentum: running mean r <- momentum * r + (1 - momentum) * batch
            mean (Keras convention; the papers' PyTorch momentum 0.1).
        kernel_initializer: initializer of the centres, N(0, 1) by default.
        bias_initializer: initializer of the bias.
        chunk_size: output units computed at once; None: `automatic_chunk_size`
            (a (rows, chunk, inputs) intermediate no larger than the output; rows
            = batch x output positions for the convolution).

    Examples:
        >>> layer = LInfDistDense(64, p=8.0)
        >>> y = layer(np.random.rand(4, 16).astype("float32"), training=True)
        >>> layer.p = float("inf")
    """

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(f"LInfDistDense expects inputs of shape (batch, features), got {input_shape}.")
        self.input_dim = int(input_shape[-1])
        self._built_input_shape = tuple(input_shape)
        self._build_common((self.input_dim, self.units))

    def _identity_positions(self):
        if self.input_dim > self.units:
            return None
        return ops.transpose(ops.one_hot(ops.arange(self.units) % self.input_dim, self.input_dim)) > 0.5

    def _kernel_matrix(self):
        return self.kernel

    def _rows(self, inputs):
        return inputs, (-1, self.units)

    def _row_count(self, input_shape):
        return input_shape[0], self.input_dim

    def compute_output_shape(self, input_shape: tuple[int | None, ...]):
        return tuple(input_shape[:-1]) + (self.units,)


_PADDINGS = ("valid", "same")


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class LInfDistConv2D(_LInfDistBase):
    """Convolutional l_p-distance layer: y[h, w, o] = ||patch(h, w) - w_o||_p, 1-Lipschitz in l_inf at p = inf.

    Each output is the distance of one input patch to a filter, so it moves
    at most as much as the largest input coordinate. The mean shift averages
    over the batch and the spatial positions. Zero padding ("same") keeps the
    Lipschitz property: padded values are constants.

    Args:
        filters: number of output channels.
        kernel_size: int or pair, the patch size.
        strides: int or pair.
        padding: "valid" or "same".
        **kwargs: `p`, `mean_shift`, `use_bias`, `identity_init`, `identity_value`,
            `negate`, `momentum`, `kernel_initializer`, `bias_initializer`,
            `chunk_size` as in `LInfDistDense`; the identity init sets the kernel
            centre of channel i mod c_in of filter i (when c_in <= filters).

    Examples:
        >>> layer = LInfDistConv2D(8, 3, padding="same", p=8.0)
        >>> y = layer(np.random.rand(2, 6, 6, 3).astype("float32"), training=True)
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int] = 1,
        padding: str = "valid",
        **kwargs: Any,
    ) -> None:
        super().__init__(filters, **kwargs)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.strides = _pair(strides, "strides")
        if padding not in _PADDINGS:
            raise ValueError(f"padding must be one of {_PADDINGS}, got {padding!r}.")
        self.padding = padding

    @property
    def filters(self):
        return self.units

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                f"LInfDistConv2D expects inputs of shape (batch, height, width, channels), got {input_shape}."
            )
        self.input_channels = int(input_shape[-1])
        self._built_input_shape = tuple(input_shape)
        self._build_common(self.kernel_size + (self.input_channels, self.units))

    def _identity_positions(self):
        if self.input_channels > self.units:
            return None
        kernel_height, kernel_width = self.kernel_size
        centre = ops.one_hot((kernel_height // 2) * kernel_width + kernel_width // 2, kernel_height * kernel_width)
        channel = ops.one_hot(ops.arange(self.units) % self.input_channels, self.input_channels)
        mask = ops.einsum("s,oc->sco", centre, channel)
        return ops.reshape(mask, self.kernel_size + (self.input_channels, self.units)) > 0.5

    def _kernel_matrix(self):
        # extract_patches orders a patch as (row, column, channel), like this reshape.
        return ops.reshape(self.kernel, (-1, self.units))

    def _rows(self, inputs):
        patches = ops.image.extract_patches(
            inputs, self.kernel_size, strides=self.strides, padding=self.padding, data_format="channels_last"
        )
        height, width, patch_dim = patches.shape[1], patches.shape[2], patches.shape[3]
        return ops.reshape(patches, (-1, patch_dim)), (-1, height, width, self.units)

    def _row_count(self, input_shape):
        _, height, width, _ = self.compute_output_shape(input_shape)
        batch = input_shape[0] if input_shape[0] is not None else _NOMINAL_BATCH
        rows = batch * height * width if height is not None and width is not None else None
        return rows, self.kernel_size[0] * self.kernel_size[1] * self.input_channels

    def compute_output_shape(self, input_shape: tuple[int | None, ...]):
        spatial = []
        for size, kernel, stride in zip(input_shape[1:3], self.kernel_size, self.strides):
            if size is None:
                spatial.append(None)
            elif self.padding == "same":
                spatial.append(-(-size // stride))
            else:
                spatial.append((size - kernel) // stride + 1)
        return (input_shape[0], *spatial, self.units)

    def get_config(self) -> dict:
        config = super().get_config()
        config["filters"] = config.pop("units")
        config.update({"kernel_size": self.kernel_size, "strides": self.strides, "padding": self.padding})
        return config


def _pair(value, name):
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1:
        return (int(value), int(value))
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"{name} must be a positive integer or a pair of them, got {value!r}.")


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class LogitScale(LipschitzBounded, keras.layers.Layer):
    """Identity layer that owns the learnable logit scale s of l_inf-dist Net v2.

    v2 multiplies the logits by s only inside its cross-entropy term, so the
    forward pass is unchanged (the network stays 1-Lipschitz) and the loss
    (`deel_lip_ext.linf.ClippedHingeCrossEntropy(logit_scale=layer)`) reads
    `layer.scale`. s = lr_multiplier * raw, so that with Adam s moves
    lr_multiplier times slower than the other weights (v2: 0.006 vs 0.03).

    Args:
        initial_value: initial s (1 in v2).
        lr_multiplier: ratio of s's learning rate to the optimizer's.

    Examples:
        >>> scale = LogitScale()
        >>> logits = scale(np.zeros((2, 10), "float32"))
    """

    def __init__(self, initial_value: float = 1.0, lr_multiplier: float = 0.2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name, value in (("initial_value", initial_value), ("lr_multiplier", lr_multiplier)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}.")
        self.initial_value = float(initial_value)
        self.lr_multiplier = float(lr_multiplier)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.raw_scale = self.add_weight(
            name="raw_scale",
            shape=(),
            initializer=keras.initializers.Constant(self.initial_value / self.lr_multiplier),
        )

    @property
    def scale(self):
        """The scale s as a tensor (differentiable w.r.t. the layer's weight)."""
        return self.lr_multiplier * self.raw_scale

    def call(self, inputs: ArrayLike):
        return inputs

    def interval_bounds(self, lower: ArrayLike, upper: ArrayLike):
        return lower, upper

    def _lipschitz_constant(self, norm, input_shape):
        return 1.0  # the identity

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"initial_value": self.initial_value, "lr_multiplier": self.lr_multiplier})
        return config
