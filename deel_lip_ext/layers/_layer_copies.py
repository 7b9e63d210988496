"""Layers' build shapes and copies: what an export or a clone needs from a built layer."""

from __future__ import annotations

import keras

__all__ = ["built_input_shape", "copied_with_weights"]


def built_input_shape(layer: keras.layers.Layer) -> tuple | None:
    """The input shape a layer was built with (batch dimension included), or None if unknown.

    Args:
        layer: a Keras layer, built or called on a symbolic input.

    Returns:
        The shape as a tuple, or None.
    """
    shapes = getattr(layer, "_build_shapes_dict", None) or {}
    shape = next(iter(shapes.values()), None)
    if shape is None:
        try:
            shape = layer.input.shape
        except (AttributeError, ValueError):
            return None
    return tuple(shape)


def copied_with_weights(layer: keras.layers.Layer) -> keras.layers.Layer:
    """A new layer of `layer`'s class and config, built as it was and holding a copy of its weights (if any).

    Args:
        layer: a Keras layer whose config round-trips through `from_config`.

    Returns:
        The copy, a new layer object.
    """
    clone = type(layer).from_config(layer.get_config())
    if layer.weights:
        clone.build(built_input_shape(layer))
        clone.set_weights(layer.get_weights())
    return clone
