"""Interval bound propagation (IBP) through chains of l_inf-dist, Dense, monotone activation and reshaping layers.

`interval_bounds` propagates an input box through a chain of layers in
inference mode; `elided_margins` bounds the logit differences z_j - z_t over
the box directly through a last linear Dense layer (tighter). The l_inf-dist
losses (`deel_lip_ext.losses.linf`) train on these bounds and
`deel_lip_ext.linf.certify_ibp` certifies with them.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext._validation import ArgumentTypeError
from deel_lip_ext.layers._call_overrides import check_bounded_call
from deel_lip_ext.layers.linf import LogitScale
from deel_lip_ext.lipschitz import is_non_decreasing_activation
from deel_lip_ext.model_bound import chain_operations

__all__ = ["interval_bounds", "elided_margins", "chain_layers", "box_dtype"]

# Stock layers are matched by exact class: a subclass may change `call`.
_SHAPE_LAYERS = (keras.layers.Flatten, keras.layers.Reshape, keras.layers.Dropout)


def _is_linear(activation):
    return activation is None or activation is keras.activations.linear


def _check_monotone(activation, layer):
    """Elementwise non-decreasing activations (known by identity in `deel_lip_ext.lipschitz.ACTIVATIONS`) only."""
    if not is_non_decreasing_activation(activation):
        raise ArgumentTypeError(
            f"layer {layer.name!r}: interval bounds need a non-decreasing `keras.activations` function "
            f"(relu, tanh, sigmoid, ...), got {getattr(activation, '__name__', activation)!r}."
        )


def _is_monotone_relu(layer):
    return type(layer) is keras.layers.ReLU and layer.negative_slope >= 0 and layer.threshold == 0


def _dense_bounds(layer, lower, upper):
    """Centre/radius form: W c + b +- |W| r, then the (monotone) activation."""
    centre, radius = (upper + lower) / 2.0, (upper - lower) / 2.0
    kernel = ops.cast(layer.kernel, centre.dtype)
    mid = ops.matmul(centre, kernel)
    if layer.use_bias:
        mid = mid + ops.cast(layer.bias, centre.dtype)
    spread = ops.matmul(radius, ops.abs(kernel))
    _check_monotone(layer.activation, layer)
    return layer.activation(mid - spread), layer.activation(mid + spread)


def _layer_bounds(layer, lower, upper):
    if hasattr(layer, "interval_bounds"):
        check_bounded_call(layer, ("interval_bounds",))
        return layer.interval_bounds(lower, upper)
    if type(layer) in _SHAPE_LAYERS:
        return layer(lower, training=False), layer(upper, training=False)
    if type(layer) is keras.layers.Rescaling:
        # Elementwise affine: the image of the box is spanned by the images of its corners.
        low, high = layer(lower), layer(upper)
        return ops.minimum(low, high), ops.maximum(low, high)
    if type(layer) is keras.layers.Dense:
        return _dense_bounds(layer, lower, upper)
    if type(layer) is keras.layers.Activation or _is_monotone_relu(layer):
        if type(layer) is keras.layers.Activation:
            _check_monotone(layer.activation, layer)
        # A non-decreasing elementwise map sends the box's ends to the image's ends.
        return layer(lower), layer(upper)
    raise ArgumentTypeError(
        f"layer {layer.name!r} ({type(layer).__name__}) has no interval bounds: supported are l_inf-dist layers, "
        "Dense, non-decreasing activations (Activation, ReLU), Rescaling, Flatten, Reshape, Dropout and LogitScale."
    )


def interval_bounds(model: keras.Model, lower: ArrayLike, upper: ArrayLike) -> tuple[Any, Any]:
    """Bounds of the inference-mode outputs of a chain of layers over the box [lower, upper].

    Args:
        model: a Sequential / chain-shaped functional model, a layer, or a list of layers.
        lower: arrays of the input shape with lower <= upper.
        upper: arrays of the input shape with lower <= upper.

    Returns:
        (lower, upper) tensors of the output shape.

    Examples:
        >>> low, high = interval_bounds(model, np.clip(x - 0.3, 0, 1), np.clip(x + 0.3, 0, 1))
    """
    layers = chain_layers(model)
    dtype = box_dtype(layers)
    lower, upper = ops.convert_to_tensor(lower, dtype), ops.convert_to_tensor(upper, dtype)
    for layer in layers:
        lower, upper = _layer_bounds(layer, lower, upper)
    return lower, upper


def chain_layers(model: keras.Model | keras.layers.Layer | list) -> list:
    """The layers a chain applies, in order: of a model (nested chain models unrolled), a layer or a list of them.

    A model must run its graph (its class does not override `call`) and that
    graph must be a chain (`deel_lip_ext.model_bound.chain_operations`);
    otherwise a `ValueError` says why.

    Args:
        model: a Keras model, a layer, or a list (or tuple) of models and layers applied in order.

    Returns:
        A flat list of layers, without `InputLayer`s.
    """
    items = model if isinstance(model, (list, tuple)) else [model]
    return [leaf for item in items for leaf in _unrolled(item)]


def _unrolled(item):
    if isinstance(item, keras.layers.InputLayer):
        return []
    if not isinstance(item, keras.Model):
        return [item]
    return [leaf for operation in chain_operations(item) for leaf in _unrolled(operation)]


def _strip_identities(layers):
    # Exact classes, as everywhere: a subclass may change `call` (a "Dropout" returning -x flips every margin).
    while layers and type(layers[-1]) in (LogitScale, keras.layers.Dropout):
        layers = layers[:-1]
    return layers


def box_dtype(layers: list) -> str:
    """The dtype to propagate boxes in: float64 for a chain computing in float64, else float32.

    A float64 model's logit differences below float32's resolution would be rounded away (a margin
    of -1e-9 certified as the model decides the other way).

    Args:
        layers: the chain's layers (e.g. from `chain_layers`).

    Returns:
        "float64" or "float32".
    """
    return "float64" if any(getattr(layer, "compute_dtype", None) == "float64" for layer in layers) else "float32"


def _dense_rounding_slack(dense, lower, upper, is_target, unit_roundoff):
    """2 gamma_{2H+4} (sum_k (|W_kj| + |W_kt|) max(|l_k|, |u_k|) + |b_j| + |b_t|) for the last Dense layer.

    Any floating-point evaluation of z_j - z_t = fl(fl(W_j h + b_j) - fl(W_t h + b_t)), in any summation
    order, is within gamma_{H+2} (|W_j| |h| + |b_j| + |W_t| |h| + |b_t|) of the exact value
    (Higham, Accuracy and Stability of Numerical Algorithms, 3.1; gamma_n = n u / (1 - n u)); the elided
    bound's own evaluation, a dot product of length 2H after one rounding of W_j - W_t, is within
    gamma_{2H+3} of the same sum. Without this slack, a label the model misclassified (or tied) by a
    rounding was certified where the model's evaluation summed in another order than the bound's
    (XLA picks its order per batch size: JAX on CPU).
    """
    magnitude = ops.maximum(ops.abs(ops.convert_to_tensor(lower)), ops.abs(ops.convert_to_tensor(upper)))  # |h|
    # The coarsest of: the caller's (the model's realized output dtype), the layer's, the bound's (JAX
    # without x64 computes a float64 request in float32).
    for dtype in (dense.compute_dtype, magnitude.dtype):
        unit_roundoff = max(unit_roundoff, float(np.finfo(keras.backend.standardize_dtype(dtype)).eps) / 2)
    terms = 2 * int(dense.kernel.shape[0]) + 4
    if terms * unit_roundoff >= 0.5:
        raise ValueError(
            f"layer {dense.name!r}: {terms} terms are too many to bound the rounding of its evaluation in this "
            "dtype; compute the model in float64."
        )
    twice_gamma = 2 * terms * unit_roundoff / (1 - terms * unit_roundoff)
    absolute_kernel = ops.abs(ops.cast(dense.kernel, magnitude.dtype))
    target_row = ops.matmul(ops.cast(is_target, magnitude.dtype), ops.transpose(absolute_kernel))  # (N, H): |W_t|
    scale = ops.matmul(magnitude, absolute_kernel) + ops.sum(magnitude * target_row, axis=-1, keepdims=True)
    if dense.use_bias:
        absolute_bias = ops.abs(ops.cast(dense.bias, magnitude.dtype))
        scale = scale + absolute_bias + ops.sum(ops.where(is_target, absolute_bias, 0.0), axis=-1, keepdims=True)
    return twice_gamma * scale


def elided_margins(
    layers: list, lower: ArrayLike, upper: ArrayLike, is_target: ArrayLike, unit_roundoff: float | None = None
) -> Any:
    """Upper bounds of z_j - z_t over the box (entry t is 0), eliding a last linear Dense layer.

    Bounding (W_j - W_t) h + b_j - b_t directly is tighter than u_j - l_t.

    Args:
        layers: the chain of layers (see `interval_bounds`).
        lower: lower corner of the input box.
        upper: upper corner of the input box.
        is_target: boolean (N, C) mask of the true classes.
        unit_roundoff: None (training: the bound as computed), or the unit roundoff of the model's own
            evaluation (2^-24 for float32): then the elided bound also covers every floating-point
            evaluation of that last Dense layer, in any summation order, and this bound's own rounding
            (see `_dense_rounding_slack`). The larger of it and the roundoff of the dtype the bound is
            computed in is used.

    Examples:
        >>> margins = elided_margins(chain_layers(model), x - 0.1, x + 0.1, np.eye(10, dtype=bool)[y])
    """
    layers = _strip_identities(list(layers))
    last = layers[-1]
    if type(last) is keras.layers.Dense and _is_linear(last.activation):
        for layer in layers[:-1]:
            lower, upper = _layer_bounds(layer, lower, upper)
        centre, radius = (upper + lower) / 2.0, (upper - lower) / 2.0
        kernel = ops.cast(last.kernel, centre.dtype)
        target_weights = ops.matmul(ops.cast(is_target, kernel.dtype), ops.transpose(kernel))  # (N, H)
        differences = ops.expand_dims(kernel, 0) - ops.expand_dims(target_weights, 2)  # (N, H, C)
        bound = ops.einsum("nh,nhc->nc", centre, differences) + ops.einsum("nh,nhc->nc", radius, ops.abs(differences))
        if last.use_bias:
            bias = ops.cast(last.bias, centre.dtype)
            bound = bound + bias - ops.sum(ops.where(is_target, bias, 0.0), axis=-1, keepdims=True)
        if unit_roundoff is not None:
            bound = bound + _dense_rounding_slack(last, lower, upper, is_target, unit_roundoff)
        return ops.where(is_target, 0.0, bound)
    for layer in layers:
        lower, upper = _layer_bounds(layer, lower, upper)
    lower_target = ops.sum(ops.where(is_target, lower, 0.0), axis=-1, keepdims=True)
    return ops.where(is_target, 0.0, upper - lower_target)
