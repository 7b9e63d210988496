"""Measuring tools: exact layer singular values, whole-model bounds, empirical constants.

* `conv_singular_values`, `conv_operator_matrix`, `operator_singular_values`:
  operator-norm tools, defined in `deel_lip_ext.spectrum` (which imports no
  layer) and re-exported here.
* `layer_lipschitz_constant(layer, norm, input_shape)`: the Lipschitz constant
  of one layer, from the layer's own `lipschitz_constant` (every deel-lip-ext
  layer) or from the table of stock Keras layers `deel_lip_ext.lipschitz.STOCK_LAYERS`.
* `compute_layer_sv(layer)`: exact (min, max) singular values of one layer
  for its real padding and stride (upper bound for the max on large inputs).
* `model_lipschitz_bound(model, norm)`: a certified upper bound of the whole
  model's L2 or l_inf Lipschitz constant, from a walk of its real graph
  (defined in `deel_lip_ext.model_bound`, with `layer_lipschitz_constant`).
* `evaluate_lip_const(model, x, eps, seed)`: largest Jacobian spectral norm at
  the points and near them, a lower bound of the constant (any backend).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext import _autodiff as autodiff
from deel_lip_ext._validation import check_int, check_number
from deel_lip_ext.layers._spectral_conv import SpectralConvBase
from deel_lip_ext.layers.aoc import AOCConv2DTranspose
from deel_lip_ext.layers.base import LipschitzBounded, LipschitzLayer, ParametrizedLayer, built_input_shape
from deel_lip_ext.layers.bcop import DownsamplingConv2DBase
from deel_lip_ext.layers.resampling import InvertibleDownSampling, InvertibleUpSampling
from deel_lip_ext.lipschitz import (
    activation_lipschitz,
    stock_layer_lipschitz,
)
from deel_lip_ext.spectrum import (
    MAX_DENSE_OPERATOR_SIZE,
    conv_operator_matrix,
    conv_singular_values,
    conv_sv_range,
    dense_sv_range,
    operator_singular_values,
)

from deel_lip_ext.model_bound import (
    circular_conv_sv,
    circular_pair,
    graph_nodes,
    layer_lipschitz_constant,
    model_lipschitz_bound,
    producing_node,
)

__all__ = [
    "conv_singular_values",
    "conv_operator_matrix",
    "operator_singular_values",
    "layer_lipschitz_constant",
    "compute_layer_sv",
    "layer_singular_values",
    "compute_model_sv",
    "model_lipschitz_bound",
    "evaluate_lip_const",
    "MAX_DENSE_OPERATOR_SIZE",
]

# Former private name, kept for code that imported it.
_conv_sv = conv_sv_range


def layer_singular_values(layer: keras.layers.Layer, input_shape: tuple[int | None, ...] = None):
    """The whole spectrum of a Dense/Conv2D-like layer's linear operator (for histograms).

    Dense: SVD of the (constrained) kernel. Convolution: exact on small
    inputs (dense operator) and for circular stride-1 (FFT at the input
    size); otherwise the spectrum of the circular convolution on the
    enclosing torus, whose largest value bounds the real one. The spectral
    convolutions of `PadConv2D`, `SpectralConv2DTranspose` and
    `SpectralConv1D`: exact, from the dense operator of the layer's own map,
    on inputs of at most 3072 entries (ValueError beyond).

    Args:
        layer: a built Dense/Conv2D-like layer (stock or of deel-lip-ext).
        input_shape: Keras input shape with the batch dimension (default: the build shape).

    Examples:
        >>> values = layer_singular_values(model.get_layer("conv1"))
    """
    if isinstance(layer, DownsamplingConv2DBase):
        return layer.singular_values(input_shape)
    input_shape = tuple(input_shape) if input_shape is not None else built_input_shape(layer)
    if isinstance(layer, SpectralConvBase):
        matrix = layer.operator_matrix(input_shape)
        if matrix is None:
            raise ValueError(
                f"{type(layer).__name__} {layer.name!r}: the input {input_shape} has unknown dimensions or more than "
                f"{MAX_DENSE_OPERATOR_SIZE} entries, too many for an exact spectrum; use compute_layer_sv for a bound."
            )
        return np.linalg.svd(matrix, compute_uv=False)
    if isinstance(layer, ParametrizedLayer):
        kernel = keras.ops.convert_to_numpy(layer.effective_kernel())
    elif isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
        kernel = keras.ops.convert_to_numpy(layer.kernel)
    else:
        raise ValueError(f"layer_singular_values needs a Dense or Conv2D-like layer, got {type(layer).__name__}.")
    if kernel.ndim == 2:
        return np.linalg.svd(kernel, compute_uv=False)
    if isinstance(layer, (keras.layers.Conv2DTranspose, AOCConv2DTranspose)) or (
        tuple(getattr(layer, "dilation_rate", (1, 1))) != (1, 1) or getattr(layer, "groups", 1) != 1
    ):
        # The spectrum below is that of a plain convolution with this kernel, strides and padding.
        raise ValueError(
            "layer_singular_values: no full spectrum for the transposed, dilated or grouped convolution "
            f"{layer.name!r}; use compute_layer_sv for its (min, max) range."
        )
    strides, padding = tuple(layer.strides), layer.padding
    height, width, channels = input_shape[1:]
    if padding == "circular" and tuple(strides) == (1, 1):
        return conv_singular_values(kernel, (height, width))
    if height * width * channels <= MAX_DENSE_OPERATOR_SIZE:
        return operator_singular_values(conv_operator_matrix(kernel, input_shape[1:], strides, padding))
    size = (height, width) if padding == "circular" else (height + kernel.shape[0] - 1, width + kernel.shape[1] - 1)
    return conv_singular_values(kernel, size)


_SHAPE_ONLY_LAYERS = (
    keras.layers.InputLayer,
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.Dropout,
    keras.layers.Permute,
    keras.layers.Identity,
)


def _linear_sv(layer, input_shape):
    """(min, max) singular values of the bias-free linear map of a parametrized or stock Dense/Conv2D layer."""
    if isinstance(layer, ParametrizedLayer):
        return layer.singular_value_range(input_shape)
    if not layer.built:
        raise ValueError(f"Layer {layer.name!r} must be built before its singular values can be computed.")
    if type(layer) is keras.layers.Dense:
        return dense_sv_range(layer.kernel)
    stock_layer_lipschitz(layer, "l2", input_shape)  # refuses dilated/grouped convolutions
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    return conv_sv_range(kernel, tuple(input_shape[1:]), layer.strides, layer.padding)


def compute_layer_sv(
    layer: keras.layers.Layer,
    input_shape: tuple[int, ...] | None = None,
    supplementary_type2sv: dict[type, Callable] | None = None,
) -> tuple[float, float] | None:
    """Exact (min, max) singular values of one layer's linear operator, or its Lipschitz range.

    * deel-lip-ext parametrized layers: computed from a fresh
      `effective_kernel()` for the layer's own padding, stride and input size
      (dense SVD; FFT for circular stride-1 convolutions; dense operator
      matrix for other convolutions on small inputs, and on big inputs a
      certified upper bound for the max with min reported as 0); activation excluded.
    * Parameter-free Lipschitz layers (GroupSort, MaxMin, pooling,
      downsampling, ...): (k, k): their Jacobian is k times a partial
      isometry almost everywhere.
    * Stock `Dense`/`Conv2D`: their kernel times the activation's constant (bias excluded).
    * Other stock layers of `deel_lip_ext.lipschitz.STOCK_LAYERS`: (1, 1) for
      shape-only layers (Flatten, Reshape, Dropout, Input), else (0, constant).
    * Anything else: `supplementary_type2sv[type(layer)](layer, input_shape)`
      when given (deel-lip's hook for layer types it does not know), else
      `None` (unknown).

    Args:
        layer: a built Keras layer.
        input_shape: the layer's input shape with the batch axis (defaults to
            its build shape). A dict here is taken as `supplementary_type2sv`
            (deel-lip's positional order `compute_layer_sv(layer, supplementary_type2sv)`).
        supplementary_type2sv: deel-lip's dict layer type -> function
            `(layer, input_shape) -> (min, max)`, used for the layers the
            library does not know (its own values are exact, so they take precedence).

    Examples:
        >>> compute_layer_sv(SpectralDense(8, k_coef_lip=2.0))  # after build -> (2.0, 2.0)
    """
    if isinstance(input_shape, dict):
        input_shape, supplementary_type2sv = None, input_shape
    input_shape = tuple(input_shape) if input_shape is not None else built_input_shape(layer)
    values = _known_layer_sv(layer, input_shape)
    if values is None and supplementary_type2sv and type(layer) in supplementary_type2sv:
        return supplementary_type2sv[type(layer)](layer, input_shape)
    return values


def _known_layer_sv(layer: keras.layers.Layer, input_shape: tuple[int | None, ...]) -> tuple[float, float] | None:
    """`compute_layer_sv` for the layers the library knows; None for the others."""
    try:
        if isinstance(layer, ParametrizedLayer):
            return tuple(float(v) for v in _linear_sv(layer, input_shape))
        if isinstance(layer, keras.Model):
            return 0.0, model_lipschitz_bound(layer)
        if isinstance(layer, (LipschitzLayer, InvertibleDownSampling, InvertibleUpSampling)):
            k = layer.lipschitz_constant("l2", input_shape)
            return k, k
        if isinstance(layer, LipschitzBounded):
            return 0.0, layer.lipschitz_constant("l2", input_shape)
        if type(layer) in (keras.layers.Dense, keras.layers.Conv2D):
            act = activation_lipschitz(layer.activation, f"layer {layer.name!r}")
            low, high = _linear_sv(layer, input_shape)
            return (low if layer.activation is keras.activations.linear else 0.0), high * act
        high = stock_layer_lipschitz(layer, "l2", input_shape)
        return (1.0 if type(layer) in _SHAPE_ONLY_LAYERS else 0.0), high
    except ValueError:
        return None


def compute_model_sv(
    model: keras.Model, supplementary_type2sv: dict[type, Callable] | None = None
) -> dict[str, tuple[float, float] | None]:
    """Exact (min, max) singular values of every layer of a model, by layer name.

    Nested models are expanded (their layers' names are prefixed with the
    model name and a slash). Exported models are understood too: a
    `CircularPadding2D` followed by the `Conv2D` it pads counts as one
    circular convolution (the padding alone is not 1-Lipschitz). A layer
    called several times is reported at its first call's input shape
    (`model_lipschitz_bound` counts every call).

    Args:
        model: a built Keras model.
        supplementary_type2sv: as in `compute_layer_sv` (deel-lip's argument).

    Returns:
        dict name -> (min, max), or None for layers whose value is unknown.

    Examples:
        >>> for name, (lo, hi) in compute_model_sv(model).items(): print(name, lo, hi)
    """
    results = {}
    for node in graph_nodes(model):
        layer = node.operation
        if isinstance(layer, keras.layers.InputLayer) or not isinstance(layer, keras.layers.Layer):
            continue
        if layer.name in results:
            continue
        if isinstance(layer, keras.Model):
            nested = compute_model_sv(layer, supplementary_type2sv)
            results.update({f"{layer.name}/{k}": v for k, v in nested.items()})
            continue
        shape = tuple(node.input_tensors[0].shape) if node.input_tensors else None
        producer = producing_node(node.input_tensors[0]) if len(node.input_tensors) == 1 else None
        if producer is not None and circular_pair(producer.operation, layer):
            padded = tuple(producer.input_tensors[0].shape)
            low, high = circular_conv_sv(layer, padded)
            results[producer.operation.name] = (1.0, 1.0)
            act = _activation_or_none(layer)
            results[layer.name] = None if act is None else (low if act == 1.0 else 0.0, high * act)
            continue
        results[layer.name] = compute_layer_sv(layer, shape, supplementary_type2sv)
    return results


def _activation_or_none(layer):
    try:
        return activation_lipschitz(layer.activation, f"layer {layer.name!r}")
    except ValueError:
        return None


def _jacobian_function(model: keras.Model, batch_size: int, out_dim: int):
    """Compiled `x -> per-sample input Jacobians (batch, out_dim, in)` of the model, one per (model, batch size).

    Each point is repeated once per output entry and each copy's input gradient of its own output
    entry is one Jacobian row: one input gradient for the whole batch, on every backend (inference
    mode treats the samples of a batch independently).
    """
    per_model = _JACOBIAN_CACHE.setdefault(model, {})
    if (batch_size, out_dim) not in per_model:
        select = ops.convert_to_tensor(np.tile(np.eye(out_dim, dtype="float32"), (batch_size, 1)))

        def rows(x):
            def selected_outputs(inputs):
                outputs = ops.reshape(model(inputs, training=False), (batch_size * out_dim, out_dim))
                return outputs * ops.cast(select, outputs.dtype), None

            repeated = ops.repeat(x, out_dim, axis=0)
            gradient = autodiff.value_and_input_gradient(selected_outputs, repeated)[2]
            return ops.reshape(gradient, (batch_size, out_dim, -1))

        per_model[(batch_size, out_dim)] = autodiff.graph_function(rows, model.variables)
    return per_model[(batch_size, out_dim)]


# One compiled Jacobian per (model, batch size, outputs): a new trace per call would dominate.
_JACOBIAN_CACHE = autodiff.compiled_cache()


def evaluate_lip_const(
    model: keras.Model, x: ArrayLike, eps: float = 1e-4, seed: int | None = None, batch_size: int = 32
) -> float:
    """Largest spectral norm of the model's input Jacobian at the points `x` and at points near them.

    A *lower bound* of the L2 Lipschitz constant (exact at those points for
    piecewise-linear networks), computed in inference mode on any backend.
    As in deel-lip, the points are also perturbed by a noise uniform in
    [eps / 4, eps] per entry; the Jacobian (not a finite difference, which
    float32 rounding could inflate) is evaluated at both.

    Args:
        model: a Keras model.
        x: array of inputs (N, ...).
        eps: magnitude of the noise added to `x` (deel-lip's argument); 0
            evaluates at `x` only.
        seed: seed of the noise (None: a fresh one).
        batch_size: points per Jacobian batch (the last batch is padded, so
            that one compiled function serves every call).

    Returns:
        The largest Jacobian spectral norm found, a float.

    Examples:
        >>> evaluate_lip_const(model, x_test[:64])  # <= model_lipschitz_bound(model)
        >>> evaluate_lip_const(model, x_test[:64], eps=1e-4, seed=0)  # deel-lip's call
    """
    eps = check_number(eps, "eps", minimum=0)
    batch_size = check_int(batch_size, "batch_size")
    x = np.asarray(x, dtype=model.inputs[0].dtype if model.inputs else "float32")
    if eps > 0:
        noise = np.random.default_rng(seed).uniform(eps * 0.25, eps, size=x.shape).astype(x.dtype)
        x = np.concatenate([x, x + noise])
    if len(x) == 0:
        return 0.0
    batch_size = min(batch_size, len(x))
    out_dim = int(np.prod(ops.convert_to_numpy(model(x[:1], training=False)).shape[1:]))
    jacobians = _jacobian_function(model, batch_size, out_dim)
    best = 0.0
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size]
        count = len(batch)
        if count < batch_size:  # pad with copies of the last point: one compiled shape
            batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - count, axis=0)])
        jac = ops.convert_to_numpy(jacobians(ops.convert_to_tensor(batch)))[:count].astype(np.float64)
        best = max(best, float(np.linalg.svd(jac, compute_uv=False)[:, 0].max()))
    return best
