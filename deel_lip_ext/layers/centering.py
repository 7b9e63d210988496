"""Centering layers (deel-torchlip 1.0.5): `LayerCentering` and `BatchCentering`.

* `LayerCentering` subtracts, per sample and per channel, the mean over the
  spatial axes: an orthogonal projection, 1-Lipschitz for the L2 norm
  (2 for l_inf: |x_i - mean| <= 2 ||x||_inf).
* `BatchCentering` subtracts, per channel, the batch mean in training and a
  running mean at inference. At inference it is a bias (constant 1 for every
  norm) and exports to a stock `Dense` layer with the identity kernel and the
  bias -running_mean. In training the output of one sample depends on the
  others: the constant describes the inference function.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext.layers.base import LipschitzBounded

__all__ = ["LayerCentering", "BatchCentering"]


def _spatial_axes(ndim, name):
    if ndim < 3:
        raise ValueError(
            f"{name} needs inputs with spatial axes (batch, ..., channels), got rank {ndim}: "
            "use BatchCentering for vectors."
        )
    return tuple(range(1, ndim - 1))


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class LayerCentering(LipschitzBounded, keras.layers.Layer):
    """Subtract the per-sample, per-channel spatial mean (channels last): 1-Lipschitz (L2).

    Args:
        **kwargs: base `keras.layers.Layer` arguments.

    Examples:
        >>> y = LayerCentering()(keras.random.normal((2, 8, 8, 3)))  # zero spatial mean per channel
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        _spatial_axes(len(input_shape), "LayerCentering")

    def call(self, inputs: ArrayLike):
        return inputs - ops.mean(inputs, axis=_spatial_axes(len(inputs.shape), "LayerCentering"), keepdims=True)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]):
        return tuple(input_shape)

    def _lipschitz_constant(self, norm, input_shape):
        return 1.0 if norm == "l2" else 2.0

    def vanilla_export(self):
        """A copy of the layer (no stock Keras layer removes a spatial mean)."""
        return [LayerCentering.from_config(self.get_config())]


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class BatchCentering(LipschitzBounded, keras.layers.Layer):
    """Subtract the per-channel batch mean (training) or running mean (inference), channels last.

    The running mean follows torchlip: running = (1 - momentum) * running +
    momentum * batch_mean, the mean taken over every axis but the last.

    Args:
        momentum: weight of the new batch mean in the running mean, in ]0, 1].
        **kwargs: base `keras.layers.Layer` arguments.

    Examples:
        >>> layer = BatchCentering(momentum=0.05)
        >>> y = layer(x, training=True)  # batch mean removed, running mean updated
        >>> (dense,) = layer.vanilla_export()  # identity Dense with bias -running_mean
    """

    def __init__(self, momentum: float = 0.05, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 < momentum <= 1:
            raise ValueError(f"momentum must be a number in ]0, 1], got {momentum!r}.")
        self.momentum = float(momentum)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if input_shape[-1] is None:
            raise ValueError(f"BatchCentering needs a known channel dimension, got {tuple(input_shape)}.")
        self.moving_mean = self.add_weight(
            name="moving_mean",
            shape=(input_shape[-1],),
            initializer="zeros",
            trainable=False,
            dtype="float32",
            autocast=False,
        )

    def call(self, inputs: ArrayLike, training: bool | None = None):
        if training:
            mean = ops.mean(ops.cast(inputs, "float32"), axis=tuple(range(len(inputs.shape) - 1)))
            self.moving_mean.assign((1.0 - self.momentum) * self.moving_mean + self.momentum * mean)
        else:
            mean = self.moving_mean
        return inputs - ops.cast(mean, inputs.dtype)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]):
        return tuple(input_shape)

    def _lipschitz_constant(self, norm, input_shape):
        return 1.0

    def vanilla_export(self):
        """A stock `Dense` layer with the identity kernel and the bias -running_mean (exact)."""
        channels = self.moving_mean.shape[0]
        dense = keras.layers.Dense(channels, name=self.name, dtype=self.dtype_policy)
        dense.build((None, channels))
        dense.set_weights([np.eye(channels, dtype="float32"), -ops.convert_to_numpy(self.moving_mean)])
        return [dense]

    def get_config(self) -> dict:
        return {**super().get_config(), "momentum": self.momentum}
