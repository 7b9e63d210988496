"""What a certificate reads from a model: one input, one tensor of logits, computed in full precision.

`check_certifiable(model, purpose)` refuses, before any radius is computed,
the models whose outputs a certificate would misread:

* several inputs, or outputs that are a list or a dict (a certificate is about
  the decision of one classifier on one input);
* a single output through a probability activation (sigmoid, softplus, ...):
  certificates read one output as a logit whose *sign* is the decision, while
  such an output is positive and decided at another threshold (0.5);
* layers computing in float16 or bfloat16: their rounding (a relative 1e-3
  for float16) moves logits by more than a Lipschitz bound allows near the
  decision boundary, so a radius computed from them is not a proof.

Subclassed models (no graph) are checked by the shape of their logits only.
"""

from __future__ import annotations

import keras
from keras.src.ops import nn as _ops_nn

from deel_lip_ext.lipschitz import _activation_label, half_unit_roundoff
from deel_lip_ext.model_bound import producing_node

__all__ = ["check_certifiable", "float32_copy"]

# Activations whose output is decided at another threshold than 0 (probabilities, positive scores).
_THRESHOLD_ACTIVATIONS = {
    keras.activations.sigmoid,
    keras.activations.hard_sigmoid,
    keras.activations.sparse_sigmoid,
    keras.activations.softplus,
    keras.activations.sparse_plus,
    keras.activations.squareplus,
    keras.activations.log_sigmoid,
    keras.activations.softmax,
    keras.activations.exponential,
}
_THRESHOLD_OP_NAMES = ("Sigmoid", "HardSigmoid", "SparseSigmoid", "Softplus", "SparsePlus", "Squareplus", "LogSigmoid")
_THRESHOLD_OPS = tuple(getattr(_ops_nn, name) for name in _THRESHOLD_OP_NAMES + ("Softmax",) if hasattr(_ops_nn, name))
# Layers that only move or keep entries: the activation before them is still the output's.
_PASS_THROUGH = (
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.Identity,
    keras.layers.Dropout,
    keras.layers.Permute,
)


def _final_activation(tensor):
    """The activation (function or op class) that produces `tensor`, looking through reshapes and nested
    models; None when the last operation is not an activation."""
    while True:
        node = producing_node(tensor)
        if node is None:
            return None
        operation = node.operation
        if isinstance(operation, keras.Model):
            if len(operation.outputs) != 1:
                return None
            tensor = operation.outputs[0]
        elif isinstance(operation, _PASS_THROUGH) and len(node.input_tensors) == 1:
            tensor = node.input_tensors[0]
        elif isinstance(operation, keras.layers.Softmax):
            return keras.activations.softmax
        elif isinstance(operation, _THRESHOLD_OPS):
            return type(operation)
        else:
            return getattr(operation, "activation", None)


def _check_full_precision(model, purpose):
    half = [layer.name for layer in model._flatten_layers() if half_unit_roundoff(layer.compute_dtype) > 0]
    if half:
        raise ValueError(
            f"{purpose}: model {model.name!r} computes in half precision (layers {half[:3]}"
            f"{' ...' if len(half) > 3 else ''}), whose rounding can flip a decision inside a radius computed "
            "from its logits. Certify the same weights computed in float32: "
            "deel_lip_ext.certification.float32_copy(model)."
        )


def _check_not_quantized(model, purpose):
    quantized = [layer.name for layer in model._flatten_layers() if getattr(layer, "quantization_mode", None)]
    if quantized:
        raise ValueError(
            f"{purpose}: model {model.name!r} has quantized layers {quantized[:3]}"
            f"{' ...' if len(quantized) > 3 else ''}: their kernels hold integer codes with scales, which bounds "
            "and interval propagation do not read. Certify the float model before quantizing it."
        )


def check_certifiable(model: keras.Model, purpose: str = "certify") -> None:
    """Refuse a model whose output a certificate would misread (see the module docstring).

    Args:
        model: the classifier to certify.
        purpose: the function asking, for the error message.

    Raises:
        ValueError: naming the model, what is wrong and the fix.

    Examples:
        >>> check_certifiable(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))  # accepted
    """
    _check_full_precision(model, purpose)
    _check_not_quantized(model, purpose)
    try:
        inputs, outputs = model.inputs, model.outputs
        # A Sequential model has one output tensor; a functional one may return a list or dict of them.
        output = outputs[0] if isinstance(model, keras.Sequential) else model.output
    except (AttributeError, ValueError, IndexError, TypeError):
        return  # subclassed or unbuilt: no graph to read
    if not inputs or output is None:
        return
    if len(inputs) != 1 or keras.tree.is_nested(output):
        shapes = keras.tree.map_structure(lambda tensor: tuple(tensor.shape), output)
        raise ValueError(
            f"{purpose}: model {model.name!r} has {len(inputs)} input(s) and outputs {shapes}: "
            "a certificate is about one classifier's logits on one input. Certify a model with one input and one "
            "(N, C) logits output (e.g. keras.Model(model.inputs[0], model.outputs[0]))."
        )
    activation = _final_activation(output)
    if output.shape[-1] == 1 and activation in _THRESHOLD_ACTIVATIONS | set(_THRESHOLD_OPS):
        raise ValueError(
            f"{purpose}: model {model.name!r} ends with activation {_activation_label(activation)!r} on its single "
            "output. A single output is read as a logit, class 1 iff it is > 0, while this activation's output is "
            "decided at another threshold (0.5 for a probability): remove the activation from the last layer "
            "(certify the logit; sigmoid(z) > 0.5 iff z > 0)."
        )


def float32_copy(model: keras.Model) -> keras.Model:
    """A copy of `model` computing in float32, with the same weights: what certificates are about.

    A model trained under a mixed-precision policy ("mixed_float16",
    "mixed_bfloat16") keeps float32 weights but computes in half precision,
    whose rounding can flip a decision inside a certified radius; `certify`
    refuses it. Certify this copy (and deploy it, or accept that the
    half-precision model only approximates the certified one).

    Args:
        model: a Sequential or functional model (nested models included).

    Returns:
        A new model of the same architecture whose layers all compute in float32.

    Examples:
        >>> result = certify(float32_copy(mixed_precision_model), (x_test, y_test), [36 / 255])
    """

    def float32_layer(layer):
        config = layer.get_config()
        config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=float32_layer, recursive=True)
    copy.set_weights(model.get_weights())
    return copy
