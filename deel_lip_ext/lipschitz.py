"""The one table of known Lipschitz constants of stock Keras activations, layers and ops.

Library layers answer for themselves through `LipschitzBounded.lipschitz_constant`
(`deel_lip_ext.layers.base`); everything stock that a bound may meet is here:

* `ACTIVATIONS`: keyed by the *identity* of the `keras.activations` function
  object (never by its name: a user function called `relu` is unknown), value
  `(constant, non_decreasing)`. The constant is exact or a proven upper bound of
  sup |f'|, valid for L2 and l_inf alike (an elementwise map).
* `STOCK_LAYERS`: keyed by the exact layer class (a subclass may change `call`
  and is not trusted), value a function `(layer, norm, input_shape) -> float`
  that reads the layer's configuration and refuses configurations it cannot bound.
* `OPS`: Keras ops met between layers of a functional graph (`h * 5.0`,
  `ops.reshape`, ...), keyed by the op class, with the rule the graph walk
  (`deel_lip_ext.utils.model_lipschitz_bound`) applies.

Norms are "l2" or "linf"; input shapes are Keras shapes with the batch dimension.
Nothing here imports a layer of this library.
"""

import math
from collections.abc import Callable

import keras
import numpy as np
from numpy.typing import ArrayLike
from keras.src.models.functional import Functional
from keras.src.ops import nn as _ops_nn
from keras.src.ops import numpy as _ops_numpy

from deel_lip_ext._validation import NORMS, check_norm
from deel_lip_ext.spectrum import (
    conv_sv_range,
    conv_transpose_norm,
    dense_sv_range,
    linf_kernel_norm,
    linf_transposed_kernel_norm,
    padded_conv_norm,
)

__all__ = [
    "NORMS",
    "ACTIVATIONS",
    "STOCK_LAYERS",
    "OPS",
    "check_bound_norm",
    "activation_lipschitz",
    "is_non_decreasing_activation",
    "stock_layer_lipschitz",
    "as_computed",
    "computed_kernel",
    "half_unit_roundoff",
    "runs_its_graph",
    "check_graph_call",
]


# gelu: max of Phi(x) + x phi(x) is 1.1281 (at sqrt 2), of its tanh approximation 1.1289;
# silu/swish: max of s(x)(1 + x(1 - s(x))) is 1.0998; selu: scale * alpha = 1.7581 (x -> 0-).
_SELU_SLOPE = 1.0507009873554805 * 1.6732632423543772
ACTIVATIONS = {
    keras.activations.linear: (1.0, True),
    keras.activations.relu: (1.0, True),
    keras.activations.relu6: (1.0, True),
    keras.activations.leaky_relu: (1.0, True),
    keras.activations.elu: (1.0, True),
    keras.activations.celu: (1.0, True),
    keras.activations.tanh: (1.0, True),
    keras.activations.hard_tanh: (1.0, True),
    keras.activations.sigmoid: (0.25, True),
    keras.activations.hard_sigmoid: (1.0 / 6.0, True),
    keras.activations.sparse_sigmoid: (0.5, True),
    keras.activations.softplus: (1.0, True),
    keras.activations.sparse_plus: (1.0, True),
    keras.activations.squareplus: (1.0, True),
    keras.activations.softsign: (1.0, True),
    keras.activations.log_sigmoid: (1.0, True),
    keras.activations.tanh_shrink: (1.0, True),
    keras.activations.soft_shrink: (1.0, True),
    keras.activations.gelu: (1.13, False),
    keras.activations.silu: (1.1, False),
    keras.activations.hard_silu: (1.5, False),
    keras.activations.selu: (_SELU_SLOPE * (1 + 1e-12), True),
    # Jacobian diag(p) - p p^T: L2 norm <= max p <= 1, l_inf norm 2 max p(1 - p) <= 1/2.
    keras.activations.softmax: (1.0, False),
}


def check_bound_norm(norm: str) -> str:
    """Return `norm` ("l2" or "linf"), or raise `ValueError` naming the accepted values.

    Args:
        norm: the norm name to check.
    """
    return check_norm(norm)


def _activation_label(activation):
    return getattr(activation, "__name__", repr(activation))


def activation_lipschitz(activation: Callable | None, owner: str = "the layer") -> float:
    """Lipschitz constant of a `keras.activations` function (None: identity), or `ValueError`.

    Args:
        activation: the function object (compared by identity, never by name).
        owner: who uses it, for the error message (e.g. "layer 'dense_1'").
    """
    if activation is None:
        return 1.0
    entry = ACTIVATIONS.get(activation)
    if entry is None:
        raise ValueError(
            f"{owner} uses activation {_activation_label(activation)!r}, which is not a `keras.activations` function "
            "with a known finite Lipschitz constant (e.g. exponential, mish, a user function): use a known activation "
            "(relu, tanh, gelu, ...) or a separate Lipschitz layer (GroupSort2, ...), or pass lip_const= explicitly."
        )
    return entry[0]


def is_non_decreasing_activation(activation: Callable | None) -> bool:
    """Whether a `keras.activations` function (by identity) is known to be non-decreasing (None: identity).

    Args:
        activation: a function of `keras.activations` (`keras.activations.get(name)`), or None; a function
            missing from `ACTIVATIONS` counts as not known to be non-decreasing (False).
    """
    return activation is None or ACTIVATIONS.get(activation, (None, False))[1]


def half_unit_roundoff(dtype: str) -> float:
    """Unit roundoff of float16 (2^-11) or bfloat16 (2^-8), the half-precision compute dtypes of mixed precision
    policies, which round weights and constants before they multiply; else 0 (float32's 6e-8 is below any radius).

    Args:
        dtype: a dtype name, e.g. a layer's `compute_dtype` ("float16", "bfloat16", "float32", ...).
    """
    return {"float16": 2.0**-11, "bfloat16": 2.0**-8}.get(str(dtype), 0.0)


def as_computed(value: ArrayLike, dtype: str) -> np.ndarray:
    """`value` as float64 numpy, rounded to `dtype` first when it is a half-precision float dtype.

    Under `mixed_bfloat16` a layer multiplies with its float32 kernel (or a
    constant) rounded to bfloat16, which may round up (1 + 2^-8 + 2^-9 becomes
    1 + 2^-7): the bound must use the rounded value.

    Args:
        value: a number, array or tensor (a kernel or a constant of a layer).
        dtype: the compute dtype of the layer that multiplies with it (e.g. "float32", "bfloat16").

    Returns:
        A float64 numpy array.
    """
    if half_unit_roundoff(dtype) > 0:
        value = keras.ops.cast(keras.ops.cast(keras.ops.convert_to_tensor(value, "float32"), dtype), "float32")
    return np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float64)


def computed_kernel(layer: keras.layers.Layer) -> np.ndarray:
    """A stock layer's kernel as its call multiplies with it (rounded to the compute dtype), float64 numpy.

    Args:
        layer: a built stock Keras layer with a `kernel` (Dense, Conv2D, ...).
    """
    return as_computed(layer.kernel, layer.compute_dtype)


def _known_size(shape):
    if shape is None or any(size is None for size in shape):
        return None
    return int(np.prod(shape))


def _identity(layer, norm, input_shape):
    return 1.0


def _activation_layer(layer, norm, input_shape):
    return activation_lipschitz(layer.activation, f"layer {layer.name!r}")


def _relu_layer(layer, norm, input_shape):
    if layer.threshold != 0:
        raise ValueError(f"layer {layer.name!r}: a ReLU with threshold != 0 is discontinuous (no Lipschitz constant).")
    return max(1.0, abs(float(layer.negative_slope)))


def _leaky_relu_layer(layer, norm, input_shape):
    return max(1.0, abs(float(layer.negative_slope)))


def _elu_layer(layer, norm, input_shape):
    return max(1.0, abs(float(layer.alpha)))


def _dense_layer(layer, norm, input_shape):
    kernel = computed_kernel(layer)
    linear = dense_sv_range(kernel)[1] if norm == "l2" else linf_kernel_norm(kernel)
    return linear * activation_lipschitz(layer.activation, f"layer {layer.name!r}")


def _conv2d_layer(layer, norm, input_shape):
    if tuple(layer.dilation_rate) != (1, 1) or layer.groups != 1 or layer.data_format != "channels_last":
        raise ValueError(
            f"layer {layer.name!r}: only channels_last Conv2D with dilation 1 and groups 1 have a known bound; "
            "use such a layer or pass lip_const= explicitly."
        )
    kernel = computed_kernel(layer)
    if norm == "l2":
        shape = tuple(input_shape[1:]) if input_shape is not None else (None, None, kernel.shape[2])
        linear = conv_sv_range(kernel, shape, layer.strides, layer.padding)[1]
    else:
        linear = linf_kernel_norm(kernel)
    return linear * activation_lipschitz(layer.activation, f"layer {layer.name!r}")


def _check_plain_conv(layer, rank):
    groups = getattr(layer, "groups", 1)  # Conv2DTranspose has none
    if tuple(layer.dilation_rate) != (1,) * rank or groups != 1 or layer.data_format != "channels_last":
        raise ValueError(
            f"layer {layer.name!r}: only channels_last {type(layer).__name__} with dilation 1 and groups 1 "
            "have a known bound; use such a layer or pass lip_const= explicitly."
        )


def _conv1d_layer(layer, norm, input_shape):
    _check_plain_conv(layer, 1)
    kernel = computed_kernel(layer)
    if norm == "linf":
        linear = linf_kernel_norm(kernel)
    else:
        # A 1-D convolution is a 2-D one on (1, L) inputs with a (1, k) kernel; "causal" left-pads k - 1 zeros.
        kernel_2d = kernel[None]
        length = None if input_shape is None else input_shape[1]
        channels = kernel.shape[1]
        strides = (1,) + tuple(layer.strides)
        if layer.padding != "causal":
            linear = conv_sv_range(kernel_2d, (1, length, channels), strides, layer.padding)[1]
        elif length is None:
            linear = conv_sv_range(kernel_2d, (1, None, channels), strides, "valid")[1]  # any-size bound
        else:
            pads = ((0, 0), (kernel.shape[0] - 1, 0))
            linear = padded_conv_norm(kernel_2d, (1, length, channels), pads, "constant", strides)
    return linear * activation_lipschitz(layer.activation, f"layer {layer.name!r}")


def _conv2d_transpose_layer(layer, norm, input_shape):
    _check_plain_conv(layer, 2)
    kernel = computed_kernel(layer)
    if norm == "l2":
        shape = tuple(input_shape[1:]) if input_shape is not None else (None, None, kernel.shape[3])
        linear = conv_transpose_norm(kernel, shape, layer.strides, layer.padding, layer.output_padding)
    else:
        linear = linf_transposed_kernel_norm(kernel, layer.strides)
    return linear * activation_lipschitz(layer.activation, f"layer {layer.name!r}")


def _window_overlap(layer):
    """Most windows one input entry is in: at most ceil(pool / stride) per axis, for any size and padding."""
    return math.prod(math.ceil(p / s) for p, s in zip(layer.pool_size, layer.strides))


def _max_pooling(layer, norm, input_shape):
    # Each window's max is 1-Lipschitz in l_inf of the window; in L2 every entry is in <= c windows.
    return 1.0 if norm == "linf" else math.sqrt(_window_overlap(layer))


def _average_pooling(layer, norm, input_shape):
    if norm == "linf":
        return 1.0
    # |mean of a window|^2 <= (sum of its squares) / area; "same" borders average fewer entries (area >= 1).
    area = math.prod(layer.pool_size) if layer.padding == "valid" else 1
    return math.sqrt(_window_overlap(layer) / area)


def _global_average_pooling(layer, norm, input_shape):
    if norm == "linf":
        return 1.0
    spatial = None
    if input_shape is not None:
        spatial = input_shape[2:] if layer.data_format == "channels_first" else input_shape[1:-1]
    size = _known_size(spatial)
    return 1.0 if size is None else 1.0 / math.sqrt(size)


def _rescaling(layer, norm, input_shape):
    return float(np.max(np.abs(as_computed(layer.scale, layer.compute_dtype))))


def _upsampling(layer, norm, input_shape):
    if layer.interpolation != "nearest":
        raise ValueError(f"layer {layer.name!r}: only nearest UpSampling2D has a known bound (it copies entries).")
    return 1.0 if norm == "linf" else math.sqrt(math.prod(layer.size))


def _repeat_vector(layer, norm, input_shape):
    return 1.0 if norm == "linf" else math.sqrt(layer.n)


STOCK_LAYERS = {
    keras.layers.InputLayer: _identity,
    keras.layers.Flatten: _identity,
    keras.layers.Reshape: _identity,
    keras.layers.Permute: _identity,
    keras.layers.Identity: _identity,
    keras.layers.Dropout: _identity,  # the bound describes inference
    keras.layers.ZeroPadding2D: _identity,
    keras.layers.Cropping2D: _identity,
    keras.layers.Activation: _activation_layer,
    keras.layers.ReLU: _relu_layer,
    keras.layers.LeakyReLU: _leaky_relu_layer,
    keras.layers.ELU: _elu_layer,
    keras.layers.Softmax: _identity,  # see ACTIVATIONS[softmax]
    keras.layers.Dense: _dense_layer,
    keras.layers.Conv2D: _conv2d_layer,
    keras.layers.Conv1D: _conv1d_layer,
    keras.layers.Conv2DTranspose: _conv2d_transpose_layer,
    keras.layers.MaxPooling2D: _max_pooling,
    keras.layers.AveragePooling2D: _average_pooling,
    keras.layers.GlobalMaxPooling2D: _identity,
    keras.layers.GlobalAveragePooling2D: _global_average_pooling,
    keras.layers.Rescaling: _rescaling,
    keras.layers.UpSampling2D: _upsampling,
    keras.layers.RepeatVector: _repeat_vector,
}


def stock_layer_lipschitz(layer: keras.layers.Layer, norm: str, input_shape: tuple | None = None) -> float:
    """Lipschitz constant of a stock Keras layer from `STOCK_LAYERS` (exact class), or `ValueError`.

    Args:
        layer: a stock Keras layer (not quantized; a layer with a kernel must be built).
        norm: "l2" or "linf" (the same norm on inputs and outputs).
        input_shape: Keras input shape with the batch dimension, for the rules that depend on it
            (convolutions, global pooling); None: a bound valid at every input size.

    Returns:
        The bound, a float.
    """
    rule = STOCK_LAYERS.get(type(layer))
    if rule is None:
        raise ValueError(
            f"layer {layer.name!r} ({type(layer).__name__}) has no known Lipschitz constant: use deel_lip_ext "
            "layers or stock layers of deel_lip_ext.lipschitz.STOCK_LAYERS, or pass lip_const= explicitly."
        )
    if getattr(layer, "quantization_mode", None) is not None:
        raise ValueError(
            f"layer {layer.name!r} ({type(layer).__name__}) is quantized ({layer.quantization_mode!r}): its weights "
            "are integers with scales, which the stock table does not read. Bound the float model before "
            "quantizing it, and pass that constant explicitly (lip_const=...) if the quantized model must be used."
        )
    if rule in (_dense_layer, _conv2d_layer, _conv1d_layer, _conv2d_transpose_layer) and not layer.built:
        raise ValueError(f"layer {layer.name!r} must be built before its Lipschitz constant can be computed.")
    return float(rule(layer, check_bound_norm(norm), input_shape))


# Ops of a functional graph: "shape" ops only move entries within a sample; "additive" ones add
# their tensor arguments (constants shift); "scale" multiplies by a constant; "elementwise" apply a
# scalar function with the given constant; "concat" concatenates along a non-batch axis.
def _op_classes(module, names):
    return tuple(getattr(module, name) for name in names if hasattr(module, name))


OPS = {
    "shape": _op_classes(_ops_numpy, ("Reshape", "Transpose", "ExpandDims", "Squeeze")),
    "additive": _op_classes(_ops_numpy, ("Add", "Subtract")),
    "negative": _op_classes(_ops_numpy, ("Negative",)),
    "multiply": _op_classes(_ops_numpy, ("Multiply",)),
    "divide": _op_classes(_ops_numpy, ("Divide", "TrueDivide")),
    "concat": _op_classes(_ops_numpy, ("Concatenate",)),
    "elementwise": {
        **{cls: 1.0 for cls in _op_classes(_ops_numpy, ("Absolute", "Abs", "Tanh"))},
        **{cls: 1.0 for cls in _op_classes(_ops_nn, ("Relu", "Relu6", "Softplus", "Softsign", "Tanh"))},
        **{cls: 0.25 for cls in _op_classes(_ops_nn, ("Sigmoid",))},
    },
}


# The `call`s that run the model's functional graph and nothing else (deel_lip_ext.model's classes inherit them
# or mark theirs with `_computes_its_graph`).
_GRAPH_CALLS = (keras.Sequential.call, Functional.call)


def _computes_its_graph(call):
    """Mark a model's `call` override as computing exactly its functional graph's function (only faster).

    `check_graph_call` refuses models that override `call`, since the bounds walk the graph;
    a `call` marked so is trusted to compute that graph's function, which its tests must prove.
    The library's own mark (private: a user's `call` override stays refused).

    Examples:
        >>> class Fast(keras.Sequential):
        ...     @_computes_its_graph
        ...     def call(self, inputs, training=None, mask=None):
        ...         return super().call(inputs, training=training, mask=mask)
    """
    call._computes_its_graph = True
    return call


def runs_its_graph(model: keras.Model) -> bool:
    """Whether `model`'s class runs its functional graph and nothing else (its `call` is Keras's
    `Sequential`/`Functional` one, or marked with `_computes_its_graph`).

    Args:
        model: a Keras model.

    Examples:
        >>> runs_its_graph(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))  # True
    """
    call = type(model).call
    return call in _GRAPH_CALLS or getattr(call, "_computes_its_graph", False)


def check_graph_call(model: keras.Model, purpose: str = "model_lipschitz_bound") -> None:
    """Refuse a model whose class overrides `call`: what runs is then not (only) its graph.

    A `keras.Sequential` or functional `keras.Model` (and the classes of
    `deel_lip_ext.model`) run their graph; a subclass whose `call` does
    something else (normalizes its input, scales the output, ...) computes
    another function than the graph that a bound or an interval propagation
    would walk.

    Args:
        model: a Keras model.
        purpose: what needs the graph, named in the error message (e.g. "model_lipschitz_bound").

    Raises:
        ValueError: naming the model, its class and what to do.
    """
    if not runs_its_graph(model):
        raise ValueError(
            f"model {model.name!r} ({type(model).__name__}) overrides `call`, so it may compute something else than "
            f"its graph, which is all that {purpose} can bound: put that computation in layers of the graph "
            "(e.g. keras.layers.Rescaling for an input normalization), or pass the model's Lipschitz constant "
            "explicitly (lip_const=...)."
        )
