"""The whole-model Lipschitz bound: a walk of the model's real functional graph.

`model_lipschitz_bound(model, norm)` keeps, for every tensor of the graph, a
bound of its Lipschitz constant with respect to the model's inputs;
`layer_lipschitz_constant` is the one question every layer answers (its own
`lipschitz_constant`, or the stock table `deel_lip_ext.lipschitz.STOCK_LAYERS`).
Both are re-exported by `deel_lip_ext.utils`.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from deel_lip_ext.layers.base import LipschitzBounded, built_input_shape
from deel_lip_ext.layers.padding import CircularPadding2D, Padding2D
from deel_lip_ext.lipschitz import (
    OPS,
    activation_lipschitz,
    as_computed,
    check_bound_norm,
    check_graph_call,
    runs_its_graph,
    computed_kernel,
    stock_layer_lipschitz,
)
from deel_lip_ext.spectrum import (
    circular_pad_widths,
    conv_sv_range,
    padded_conv_norm,
)

__all__ = [
    "layer_lipschitz_constant",
    "model_lipschitz_bound",
    "check_graph_call",
    "chain_operations",
    "runs_its_graph",
]


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
        ValueError: the layer has no known constant, or a NaN or infinite weight (the message names
            it and says what to do).

    Examples:
        >>> layer_lipschitz_constant(keras.layers.Activation("gelu"))  # 1.13
    """
    norm = check_bound_norm(norm)
    if isinstance(layer, keras.Model) and not isinstance(layer, LipschitzBounded):
        return model_lipschitz_bound(layer, norm)  # each of its layers checks its own weights there
    check_finite_weights(layer)
    if isinstance(layer, LipschitzBounded):
        return layer.lipschitz_constant(norm, input_shape)
    return stock_layer_lipschitz(layer, norm, input_shape if input_shape is not None else built_input_shape(layer))


def check_finite_weights(layer: keras.layers.Layer) -> None:
    """Refuse a layer with a NaN or infinite weight (e.g. after a diverged training).

    Its function has no finite Lipschitz constant (NaN outputs, or infinite slopes), and the spectra
    the bound is made of would fail to converge or come out NaN, which no comparison rejects. The
    weights a library layer names in `infinite_weights` may be infinite (not NaN): an l_inf-dist
    layer's p = inf.

    Raises:
        ValueError: naming the layer and the first such weight.

    Examples:
        >>> check_finite_weights(keras.layers.Dense(2))  # unbuilt or finite: returns None
    """
    may_be_infinite = getattr(layer, "infinite_weights", ())
    for weight in layer.weights:
        values = keras.ops.convert_to_numpy(weight)
        not_allowed = np.isnan(values) if weight.name in may_be_infinite else ~np.isfinite(values)
        if np.any(not_allowed):
            raise ValueError(
                f"layer {layer.name!r} has a NaN or infinite value in its weight {weight.path!r}: its Lipschitz "
                "constant has no finite bound. Did the training diverge? Restore finite weights (an earlier "
                "checkpoint, a lower learning rate) before certifying."
            )


def circular_pair(layer, consumer):
    """Whether `layer` is a CircularPadding2D feeding `consumer`, a valid Conv2D it pads exactly."""
    return (
        isinstance(layer, CircularPadding2D)
        and type(consumer) is keras.layers.Conv2D
        and consumer.padding == "valid"
        and consumer.data_format == "channels_last"
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


def circular_conv_sv(conv, padded_input_shape):
    kernel = computed_kernel(conv)
    return conv_sv_range(kernel, tuple(padded_input_shape[1:]), conv.strides, "circular")


# ---------------------------------------------------------------- the graph walk


def _graph(model):
    """The functional graph of a Sequential or functional model, or a ValueError saying why there is none."""
    if not isinstance(model, keras.Model):
        raise ValueError(f"model_lipschitz_bound needs a Keras model, got {type(model).__name__}.")
    if isinstance(model, keras.Sequential):
        check_graph_call(model)
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
    check_graph_call(model)
    return model


def pin_input_shape(model: keras.Sequential) -> None:
    """Make a Sequential model refuse inputs of another shape than its graph's, as a functional model does.

    A `keras.Sequential` built with an `Input` of known size runs on other
    sizes (Keras only warns), while its bound holds at the graph's shapes
    (e.g. a zero-padded `Conv2D`'s norm grows with the size): once bounded, a
    Sequential model refuses other shapes with a `ValueError`, like a
    functional one. A model built with None spatial dimensions still
    accepts every size (its bound holds at every size).
    """
    shape = (None, *tuple(model.inputs[0].shape)[1:])
    model.input_spec = keras.layers.InputSpec(shape=shape, allow_last_axis_squeeze=True)


def graph_nodes(model):
    """The nodes of the model's graph, producers before consumers."""
    graph = _graph(model)
    return [node for depth in sorted(graph._nodes_by_depth, reverse=True) for node in graph._nodes_by_depth[depth]]


def chain_operations(model: keras.Model, purpose: str = "interval bound propagation") -> list:
    """The operations of a chain-shaped model (one input, each node reading the previous node's output), in order.

    Args:
        model: a Keras model that runs its graph (Sequential or functional).
        purpose: what needs the chain, named in the error messages.

    Returns:
        The list of the graph's operations (layers, nested models, ops of a functional model), `InputLayer`s left out.

    Raises:
        ValueError: the model overrides `call`, or its graph is not a chain (branches, merges, several
            inputs or outputs), naming the first node that breaks the chain.
    """
    graph = _graph(model)
    check_graph_call(model, purpose)
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ValueError(
            f"{purpose} needs a chain of layers with one input and one output; model {model.name!r} has "
            f"{len(graph.inputs)} inputs and {len(graph.outputs)} outputs."
        )
    current, operations = graph.inputs[0], []
    for node in graph_nodes(model):
        if isinstance(node.operation, keras.layers.InputLayer):
            continue
        if len(node.input_tensors) != 1 or node.input_tensors[0] is not current or len(node.outputs) != 1:
            raise ValueError(
                f"{purpose} needs a chain of layers, each applied to the previous one's output: operation "
                f"{_operation_label(node.operation)} of model {model.name!r} breaks the chain (a branch or a merge)."
            )
        operations.append(node.operation)
        current = node.outputs[0]
    if graph.outputs[0] is not current:
        raise ValueError(f"{purpose}: the output of model {model.name!r} is not the end of its chain of layers.")
    return operations


def producing_node(tensor):
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None
    operation, node_index, _ = history
    return operation._inbound_nodes[node_index]


def _operation_label(operation):
    return f"{getattr(operation, 'name', '?')!r} ({type(operation).__name__})"


def _sizes(shape):
    return None if any(size is None for size in shape) else int(np.prod(shape, dtype=np.int64))


def _expansion_unknown(shape, partners):
    """Whether an operand of `shape` (unknown sizes) may be copied at run time to match one of `partners`."""
    for partner in partners:
        if len(partner) > len(shape):
            return True
        for size, other in zip(reversed(shape[1:]), reversed(partner[-len(shape) + 1 :] if len(shape) > 1 else ())):
            if other != 1 and (size is None or other is None or size == 1):
                return True
    return False


def _broadcast_factor(tensor, node, norm):
    """How much broadcasting `tensor` to the node's output multiplies a norm: sqrt(copies) in L2, 1 in l_inf."""
    operation, output = node.operation, node.outputs[0]
    in_shape, out_shape = tuple(tensor.shape), tuple(output.shape)
    if norm == "linf":
        return 1.0
    if None in in_shape[1:] or None in out_shape[1:]:
        # Equal symbolic shapes prove nothing: a (None, None, C) tensor may be 1 x 1 at run time and be copied
        # to every position of the other operand (a pooled map added to its input).
        constants = [] if isinstance(operation, keras.layers.Layer) else _constants(node)  # a layer's args: tensors
        partners = [tuple(t.shape) for t in node.input_tensors if t is not tensor] + [np.shape(c) for c in constants]
        if in_shape != out_shape or _expansion_unknown(in_shape, partners):
            raise ValueError(
                f"operation {_operation_label(operation)} combines a {in_shape} tensor with operands of shapes "
                f"{partners} whose sizes are unknown until it runs: it may then broadcast (copy) entries, which "
                "multiplies the L2 constant by sqrt(copies). Give the model's Input a fixed size (e.g. "
                "keras.Input((32, 32, 3))), or bound the l_inf constant (norm='linf'), which copies do not change."
            )
        return 1.0
    if in_shape == out_shape:
        return 1.0
    if len(in_shape) != len(out_shape) or in_shape[0] != out_shape[0]:
        raise ValueError(
            f"operation {_operation_label(operation)} broadcasts a {in_shape} input to {out_shape}: the copies "
            "cannot be counted across the batch axis; make the shapes explicit."
        )
    return math.sqrt(_sizes(out_shape[1:]) / _sizes(in_shape[1:]))


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


def _constant_array(value, operation, dtype):
    """A constant of an op as float64 numpy, rounded as the op computes in `dtype` (its output's dtype)."""
    array = as_computed(value, dtype)
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
        return sum(v * _broadcast_factor(t, node, norm) for v, t in zip(values, tensors))
    if kind is keras.layers.Average:
        return sum(v * _broadcast_factor(t, node, norm) for v, t in zip(values, tensors)) / len(tensors)
    if kind in (keras.layers.Maximum, keras.layers.Minimum):
        return _joint([v * _broadcast_factor(t, node, norm) for v, t in zip(values, tensors)], norm)
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
        spread = _broadcast_factor(tensor, node, norm)
        return value * spread * float(np.max(np.abs(_constant_array(constant, operation, output.dtype)), initial=0.0))
    if isinstance(operation, OPS["divide"]) and node.arguments.args[0] is tensor:
        divisor = np.abs(_constant_array(node.arguments.args[1], operation, output.dtype))
        if divisor.size == 0 or np.min(divisor) == 0:
            raise ValueError(f"operation {_operation_label(operation)} divides by zero.")
        return value * _broadcast_factor(tensor, node, norm) / float(np.min(divisor))
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
    producer = producing_node(node.input_tensors[0])
    if producer is None:
        return None
    conv, pad = node.operation, producer.operation
    if circular_pair(pad, conv):
        high = circular_conv_sv(conv, tuple(producer.input_tensors[0].shape))[1]
    elif _padding_pair(pad, conv) and None not in tuple(producer.input_tensors[0].shape)[1:]:
        unpadded = tuple(producer.input_tensors[0].shape)[1:]
        high = padded_conv_norm(computed_kernel(conv), unpadded, pad.padding, pad.mode, conv.strides)
    else:
        return None
    act = activation_lipschitz(conv.activation, f"layer {conv.name!r}")
    return inputs[id(producer.input_tensors[0])] * high * act


def _check_float_inputs(graph, model):
    """Refuse an integer or boolean Input: Keras casts the data to it, a rounding with no finite constant."""
    for tensor in graph.inputs:
        dtype = keras.backend.standardize_dtype(tensor.dtype)
        if not dtype.startswith(("float", "bfloat")):
            raise ValueError(
                f"input {tensor.name!r} of model {model.name!r} has dtype {dtype!r}: the model casts its data to it, "
                "rounding them (a step function: no finite Lipschitz constant). Give the Input a float dtype "
                "(keras.Input(shape, dtype='float32'))."
            )


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

    The bound holds for inputs of the graph's shape: a functional model
    refuses other shapes, and so does a Sequential model once bounded
    (`pin_input_shape`; a bare `keras.Sequential` only warns).

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
    if isinstance(model, keras.Sequential):
        pin_input_shape(model)
    _check_float_inputs(graph, model)
    inputs = {id(tensor): 1.0 for tensor in graph.inputs}
    for node in graph_nodes(model):
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
