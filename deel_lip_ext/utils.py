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
  model's L2 or l_inf Lipschitz constant, from a walk of its real graph.
* `evaluate_lip_const(model, x)`: largest Jacobian spectral norm over a batch,
  a lower bound of the constant.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from numpy.typing import ArrayLike

from deel_lip_ext.layers._spectral_conv import SpectralConvBase
from deel_lip_ext.layers.aoc import AOCConv2DTranspose
from deel_lip_ext.layers.base import LipschitzBounded, LipschitzLayer, ParametrizedLayer, built_input_shape
from deel_lip_ext.layers.bcop import DownsamplingConv2DBase
from deel_lip_ext.layers.padding import CircularPadding2D, Padding2D
from deel_lip_ext.layers.resampling import InvertibleDownSampling, InvertibleUpSampling
from deel_lip_ext.lipschitz import (
    OPS,
    activation_lipschitz,
    check_bound_norm,
    stock_layer_lipschitz,
)
from deel_lip_ext.spectrum import (
    MAX_DENSE_OPERATOR_SIZE,
    circular_pad_widths,
    conv_operator_matrix,
    conv_singular_values,
    conv_sv_range,
    dense_sv_range,
    operator_singular_values,
    padded_conv_norm,
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


def layer_lipschitz_constant(layer: keras.layers.Layer, norm: str = "l2", input_shape: tuple | None = None) -> float:
    """Upper bound of one layer's Lipschitz constant (bias and activation included) at `input_shape`.

    deel-lip-ext layers answer through their `lipschitz_constant` method,
    nested models through `model_lipschitz_bound`, stock Keras layers through
    `deel_lip_ext.lipschitz.STOCK_LAYERS` (exact class and configuration).

    Args:
        layer: a Keras layer (built, for layers with weights).
        norm: "l2" or "linf".
        input_shape: Keras input shape with the batch dimension (default: the build shape).

    Raises:
        ValueError: the layer has no known constant (the message names it and says what to do).

    Examples:
        >>> layer_lipschitz_constant(keras.layers.Activation("gelu"))  # 1.13
    """
    norm = check_bound_norm(norm)
    if isinstance(layer, LipschitzBounded):
        return layer.lipschitz_constant(norm, input_shape)
    if isinstance(layer, keras.Model):
        return model_lipschitz_bound(layer, norm)
    return stock_layer_lipschitz(layer, norm, input_shape if input_shape is not None else built_input_shape(layer))


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


def compute_layer_sv(layer: keras.layers.Layer, input_shape: tuple[int, ...] | None = None):
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
    * Anything else: `None` (unknown).

    Args:
        layer: a built Keras layer.
        input_shape: the layer's input shape (defaults to its build shape).

    Examples:
        >>> compute_layer_sv(SpectralDense(8, k_coef_lip=2.0))  # after build -> (2.0, 2.0)
    """
    input_shape = tuple(input_shape) if input_shape is not None else built_input_shape(layer)
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


def _circular_pair(layer, consumer):
    """Whether `layer` is a CircularPadding2D feeding `consumer`, a valid Conv2D it pads exactly."""
    return (
        isinstance(layer, CircularPadding2D)
        and type(consumer) is keras.layers.Conv2D
        and consumer.padding == "valid"
        and tuple(consumer.strides) == (1, 1)
        and tuple(consumer.dilation_rate) == (1, 1)
        and consumer.groups == 1
        and tuple(map(tuple, layer.padding)) == circular_pad_widths(consumer.kernel_size)
    )


def _padding_pair(layer, consumer):
    """Whether `layer` is a Padding2D feeding `consumer`, a valid Conv2D (dilation 1, groups 1, channels-last)."""
    return (
        isinstance(layer, Padding2D)
        and type(consumer) is keras.layers.Conv2D
        and consumer.padding == "valid"
        and consumer.data_format == "channels_last"
        and tuple(consumer.dilation_rate) == (1, 1)
        and consumer.groups == 1
    )


def _circular_conv_sv(conv, padded_input_shape):
    kernel = keras.ops.convert_to_numpy(conv.kernel)
    return conv_sv_range(kernel, tuple(padded_input_shape[1:]), conv.strides, "circular")


def compute_model_sv(model: keras.Model) -> dict[str, tuple[float, float] | None]:
    """Exact (min, max) singular values of every layer of a model, by layer name.

    Nested models are expanded (their layers' names are prefixed with the
    model name and a slash). Exported models are understood too: a
    `CircularPadding2D` followed by the `Conv2D` it pads counts as one
    circular convolution (the padding alone is not 1-Lipschitz). A layer
    called several times is reported at its first call's input shape
    (`model_lipschitz_bound` counts every call).

    Returns:
        dict name -> (min, max), or None for layers whose value is unknown.

    Examples:
        >>> for name, (lo, hi) in compute_model_sv(model).items(): print(name, lo, hi)
    """
    results = {}
    for node in _graph_nodes(model):
        layer = node.operation
        if isinstance(layer, keras.layers.InputLayer) or not isinstance(layer, keras.layers.Layer):
            continue
        if layer.name in results:
            continue
        if isinstance(layer, keras.Model):
            results.update({f"{layer.name}/{k}": v for k, v in compute_model_sv(layer).items()})
            continue
        shape = tuple(node.input_tensors[0].shape) if node.input_tensors else None
        producer = _producer(node.input_tensors[0]) if len(node.input_tensors) == 1 else None
        if producer is not None and _circular_pair(producer.operation, layer):
            padded = tuple(producer.input_tensors[0].shape)
            low, high = _circular_conv_sv(layer, padded)
            results[producer.operation.name] = (1.0, 1.0)
            act = _activation_or_none(layer)
            results[layer.name] = None if act is None else (low if act == 1.0 else 0.0, high * act)
            continue
        results[layer.name] = compute_layer_sv(layer, shape)
    return results


def _activation_or_none(layer):
    try:
        return activation_lipschitz(layer.activation, f"layer {layer.name!r}")
    except ValueError:
        return None


# ---------------------------------------------------------------- the graph walk


def _graph(model):
    """The functional graph of a Sequential or functional model, or a ValueError saying why there is none."""
    if not isinstance(model, keras.Model):
        raise ValueError(f"model_lipschitz_bound needs a Keras model, got {type(model).__name__}.")
    if isinstance(model, keras.Sequential):
        graph = getattr(model, "_functional", None)
        if graph is None:
            raise ValueError(
                f"Sequential model {model.name!r} is not built: give it a keras.Input or call it on data first."
            )
        return graph
    if not hasattr(model, "_nodes_by_depth") or not getattr(model, "_functional", True) or not model.inputs:
        raise ValueError(
            f"model {model.name!r} ({type(model).__name__}) is a subclassed model: its computation is Python code "
            "whose graph cannot be walked, so no bound can be proven. Rebuild it as a functional or Sequential "
            "model, or pass its Lipschitz constant explicitly (lip_const=...)."
        )
    return model


def _graph_nodes(model):
    """The nodes of the model's graph, producers before consumers."""
    graph = _graph(model)
    return [node for depth in sorted(graph._nodes_by_depth, reverse=True) for node in graph._nodes_by_depth[depth]]


def _producer(tensor):
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None
    operation, node_index, _ = history
    return operation._inbound_nodes[node_index]


def _operation_label(operation):
    return f"{getattr(operation, 'name', '?')!r} ({type(operation).__name__})"


def _sizes(shape):
    return None if any(size is None for size in shape) else int(np.prod(shape, dtype=np.int64))


def _broadcast_factor(tensor, output, norm, operation):
    """How much broadcasting `tensor` to `output`'s shape multiplies a norm: sqrt(copies) in L2, 1 in l_inf."""
    in_shape, out_shape = tuple(tensor.shape), tuple(output.shape)
    if in_shape == out_shape or norm == "linf":
        return 1.0
    in_size, out_size = _sizes(in_shape[1:]), _sizes(out_shape[1:])
    if in_size is None or out_size is None or len(in_shape) != len(out_shape) or in_shape[0] != out_shape[0]:
        raise ValueError(
            f"operation {_operation_label(operation)} broadcasts a {in_shape} input to {out_shape}: the copies "
            "cannot be counted for unknown sizes or across the batch axis; make the shapes explicit."
        )
    return math.sqrt(out_size / in_size)


def _check_per_sample(operation, tensors, output):
    """Refuse an op that moves entries across samples (changes the batch axis or the per-sample size)."""
    out_shape = tuple(output.shape)
    axes = getattr(operation, "axes", None) if type(operation).__name__ == "Transpose" else (0,)
    for tensor in tensors:
        in_shape = tuple(tensor.shape)
        size = _sizes(in_shape[1:])
        batch_kept = in_shape[0] is None and out_shape[0] is None and axes is not None and axes[0] == 0
        if not batch_kept or size is None or size != _sizes(out_shape[1:]):
            raise ValueError(
                f"operation {_operation_label(operation)} maps {in_shape} to {out_shape}: only reshapes that keep "
                "the batch axis first and the size of each sample are bounded."
            )


def _constants(node):
    """The non-tensor positional arguments of a node's call."""
    return [arg for arg in node.arguments.args if not isinstance(arg, keras.KerasTensor)]


def _constant_array(value, operation):
    array = np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"operation {_operation_label(operation)} uses a non-finite constant.")
    return array


def _joint(values, norm):
    """Constant of the concatenation of tensors whose constants are `values` (w.r.t. the same input)."""
    return math.sqrt(sum(v * v for v in values)) if norm == "l2" else max(values)


def _concat_axis_ok(operation, output):
    axis = getattr(operation, "axis", None)
    return isinstance(axis, int) and axis % len(output.shape) != 0


def _node_constant(node, inputs, norm):
    """The constant of a node's outputs w.r.t. the model input, given its tensor inputs' constants."""
    operation, tensors, output = node.operation, node.input_tensors, node.outputs[0]
    values = [inputs[id(t)] for t in tensors]
    if not tensors:
        raise ValueError(f"operation {_operation_label(operation)} has no tensor input: it is not bounded.")
    kind = type(operation)
    if isinstance(operation, keras.Model):
        return model_lipschitz_bound(operation, norm) * _joint(values, norm)
    if kind in (keras.layers.Add, keras.layers.Subtract) or isinstance(operation, OPS["additive"]):
        return sum(v * _broadcast_factor(t, output, norm, operation) for v, t in zip(values, tensors))
    if kind is keras.layers.Average:
        return sum(v * _broadcast_factor(t, output, norm, operation) for v, t in zip(values, tensors)) / len(tensors)
    if kind in (keras.layers.Maximum, keras.layers.Minimum):
        return _joint([v * _broadcast_factor(t, output, norm, operation) for v, t in zip(values, tensors)], norm)
    if kind is keras.layers.Concatenate or isinstance(operation, OPS["concat"]):
        if not _concat_axis_ok(operation, output):
            raise ValueError(f"operation {_operation_label(operation)} concatenates along the batch axis.")
        return _joint(values, norm)
    if len(tensors) != 1:
        raise ValueError(
            f"operation {_operation_label(operation)} combines {len(tensors)} tensors in a way with no known "
            "Lipschitz bound (e.g. a product of two branches): pass lip_const= explicitly."
        )
    tensor, value = tensors[0], values[0]
    if isinstance(operation, keras.layers.Layer):
        return value * layer_lipschitz_constant(operation, norm, tuple(tensor.shape))
    if isinstance(operation, OPS["shape"]):
        _check_per_sample(operation, tensors, output)
        return value
    if isinstance(operation, OPS["negative"]):
        return value
    if isinstance(operation, tuple(OPS["elementwise"])):
        return value * OPS["elementwise"][type(operation)]
    if isinstance(operation, OPS["multiply"]):
        constants = _constants(node)
        if len(constants) != 1:
            raise ValueError(f"operation {_operation_label(operation)}: only a product with one constant is bounded.")
        (constant,) = constants
        spread = _broadcast_factor(tensor, output, norm, operation)
        return value * spread * float(np.max(np.abs(_constant_array(constant, operation)), initial=0.0))
    if isinstance(operation, OPS["divide"]) and node.arguments.args[0] is tensor:
        divisor = np.abs(_constant_array(node.arguments.args[1], operation))
        if divisor.size == 0 or np.min(divisor) == 0:
            raise ValueError(f"operation {_operation_label(operation)} divides by zero.")
        return value * _broadcast_factor(tensor, output, norm, operation) / float(np.min(divisor))
    raise ValueError(
        f"operation {_operation_label(operation)} has no known Lipschitz constant: use layers with a known "
        "constant (deel_lip_ext layers, deel_lip_ext.lipschitz.STOCK_LAYERS, the ops of deel_lip_ext.lipschitz.OPS), "
        "or pass lip_const= explicitly."
    )


def _fused_padded_conv(node, inputs, norm):
    """For a valid Conv2D fed by a CircularPadding2D that makes it circular, or by a Padding2D (an exported
    `PadConv2D`) on an input of known size: its constant as one padded convolution (None: not such a pair)."""
    if norm != "l2" or len(node.input_tensors) != 1:
        return None
    producer = _producer(node.input_tensors[0])
    if producer is None:
        return None
    conv, pad = node.operation, producer.operation
    if _circular_pair(pad, conv):
        high = _circular_conv_sv(conv, tuple(producer.input_tensors[0].shape))[1]
    elif _padding_pair(pad, conv) and None not in tuple(producer.input_tensors[0].shape)[1:]:
        unpadded = tuple(producer.input_tensors[0].shape)[1:]
        high = padded_conv_norm(conv.kernel, unpadded, pad.padding, pad.mode, conv.strides)
    else:
        return None
    act = activation_lipschitz(conv.activation, f"layer {conv.name!r}")
    return inputs[id(producer.input_tensors[0])] * high * act


def model_lipschitz_bound(model: keras.Model, norm: str = "l2") -> float:
    """Certified upper bound of a model's Lipschitz constant (L2 or l_inf), from its real graph.

    Walks every node of the functional graph (a Sequential model's too), in
    order, keeping for each tensor a bound of its Lipschitz constant with
    respect to the model's inputs (all inputs together, as one vector):

    * a layer multiplies its input's bound by `layer_lipschitz_constant` at
      the shape it is called with (a layer called twice counts twice; a nested
      model contributes its own bound);
    * `Add`/`Subtract` (layers or ops) sum their inputs' bounds, each times
      sqrt(copies) when broadcast (e.g. sqrt(64) for (N, 1) added to (N, 64)),
      `Average` averages them; `Concatenate`, `Maximum`, `Minimum` take the
      root of the sum of squares (L2) or the max (l_inf);
    * ops between layers: `x * c` and `x / c` by a constant, reshapes that
      keep each sample, negation and the elementwise activations of
      `deel_lip_ext.lipschitz.OPS`; anything else is refused;
    * a `CircularPadding2D` feeding the valid `Conv2D` it makes circular (an
      exported circular convolution) counts as one circular convolution, a
      `Padding2D` feeding a valid `Conv2D` (an exported `PadConv2D`) as one
      padded convolution (exact on small inputs);
    * several outputs: root of the sum of squares (L2) or max (l_inf).

    Args:
        model: a built Sequential or functional Keras model.
        norm: "l2" (default) or "linf".

    Raises:
        ValueError: naming the first layer or op whose constant is unknown,
            or saying that the model is subclassed (no graph to walk).

    Examples:
        >>> L = model_lipschitz_bound(model)  # e.g. 1.0000003 for a spectral model
    """
    norm = check_bound_norm(norm)
    graph = _graph(model)
    inputs = {id(tensor): 1.0 for tensor in graph.inputs}
    for node in _graph_nodes(model):
        if isinstance(node.operation, keras.layers.InputLayer):
            continue
        missing = [t for t in node.input_tensors if id(t) not in inputs]
        if missing:
            raise ValueError(
                f"operation {_operation_label(node.operation)} reads a tensor that does not come from the model's "
                "inputs: its constant cannot be bounded."
            )
        value = _fused_padded_conv(node, inputs, norm)
        if value is None:
            value = _node_constant(node, inputs, norm)
        for output in node.outputs:
            inputs[id(output)] = float(value)
    outputs = []
    for tensor in graph.outputs:
        if id(tensor) not in inputs:
            raise ValueError(f"output {tensor.name!r} of model {model.name!r} is not computed from its inputs.")
        outputs.append(inputs[id(tensor)])
    return float(_joint(outputs, norm))


def evaluate_lip_const(model: keras.Model, x: ArrayLike, batch_size: int = 32):
    """Largest spectral norm of the model's input Jacobian over the points `x`.

    A *lower bound* of the Lipschitz constant (exact at those points for
    piecewise-linear networks), computed in inference mode with TensorFlow's
    `batch_jacobian`.

    Args:
        model: a Keras model (TensorFlow backend).
        x: array of inputs.
        batch_size: points per Jacobian batch.

    Examples:
        >>> evaluate_lip_const(model, x_test[:64])  # <= model_lipschitz_bound(model)
    """
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(f"evaluate_lip_const needs the TensorFlow backend, got {keras.backend.backend()!r}.")
    x = np.asarray(x, dtype=model.inputs[0].dtype if model.inputs else "float32")
    best = 0.0
    for start in range(0, len(x), batch_size):
        xb = tf.convert_to_tensor(x[start : start + batch_size])
        with tf.GradientTape() as tape:
            tape.watch(xb)
            # Flatten so that a model with one scalar per sample has a rank-2 output.
            y = tf.reshape(model(xb, training=False), (tf.shape(xb)[0], -1))
        jac = tape.batch_jacobian(y, xb)
        jac = tf.reshape(jac, (tf.shape(jac)[0], tf.shape(jac)[1], -1)).numpy().astype(np.float64)
        best = max(best, float(np.linalg.svd(jac, compute_uv=False)[:, 0].max()))
    return best
