"""Gradient-norm-preserving Lipschitz activations (channels-last).

Every layer here is exactly `k_coef_lip`-Lipschitz (L2): it computes k times
a function whose Jacobian is, almost everywhere, a permutation
(`GroupSort`, `MaxMin`), a reflection (`Householder`) or a signed selection
(`CReLU`).

Channel pairing conventions (they matter when porting weights):

* `GroupSort(n)` sorts each group of `n` **consecutive** channels ascending
  (deel-lip). `GroupSort2` = `GroupSort(n=2)`: channels (0, 1), (2, 3), ...
  become (min, max) pairs. `FullSort` sorts the whole channel vector.
* `MaxMin` pairs channel i with channel i + C/2 (the two **halves** a, b)
  and returns concat(max(a, b), min(a, b)): the LConvNet/BCOP/orthogonium
  convention. It is `GroupSort2` up to a fixed channel permutation.
  Beware: deel-lip's `MaxMin` is a different function, `CReLU` here.
* `Householder` pairs the halves like `MaxMin`; at theta = pi/2 it equals
  `MaxMin`.
"""

import math
import numbers

import keras
import numpy as np
from keras import ops

from deel_lip_ext.layers.base import LipschitzLayer
from deel_lip_ext.layers.padding import check_channels_last

__all__ = ["GroupSort", "GroupSort2", "FullSort", "MaxMin", "CReLU", "Householder"]


class _ChannelActivation(LipschitzLayer, keras.layers.Layer):
    """Plumbing shared by the activations: k, channels-last check, config, last-axis size."""

    def __init__(self, k_coef_lip=1.0, data_format="channels_last", **kwargs):
        super().__init__(**kwargs)
        self._init_lipschitz(k_coef_lip)
        self.data_format = check_channels_last(data_format)

    def _channels(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"{type(self).__name__} needs a known number of channels (last axis), got {input_shape}.")
        return channels

    def _check_even_channels(self, input_shape):
        channels = self._channels(input_shape)
        if channels % 2:
            raise ValueError(
                f"{type(self).__name__} pairs the two halves of the channels: the number of channels "
                f"(last axis of input shape {tuple(input_shape)}) must be even, got {channels}."
            )
        return channels

    def _scaled(self, outputs):
        # No multiply at k = 1: an extra pass over the tensor costs as much as the activation.
        return outputs if self.k_coef_lip == 1.0 else outputs * ops.cast(self.k_coef_lip, outputs.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"k_coef_lip": self.k_coef_lip, "data_format": self.data_format})
        return config


# Measured on TF CPU: blocks of 16-32 channels are fastest (C = 64 and 256); 8 and 64+ are slower.
_MAX_SWAP_BLOCK = 32


def _pair_swap_matrix(channels):
    """Permutation matrix P with (x @ P)[2i] = x[2i+1] and (x @ P)[2i+1] = x[2i]."""
    partner = np.arange(channels).reshape(-1, 2)[:, ::-1].reshape(-1)
    return np.eye(channels)[partner].T


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class GroupSort(_ChannelActivation):
    """Sort each group of `n` consecutive channels in ascending order, times `k_coef_lip`.

    GNP and 1-Lipschitz (Anil et al. 2019): the Jacobian is a permutation
    almost everywhere. `n=2` is `GroupSort2`, `n=None` (the whole channel
    vector) is `FullSort`.

    Implementation note (measured on TF CPU in graph mode): for n = 2 the
    partner of every channel is fetched by a matmul with a block-diagonal
    permutation matrix (blocks of <= 32 channels), and (min, max) is one
    `maximum` with the first channel of each pair negated before and after.
    This is about twice as fast as reshaping into pairs and stacking min and
    max, and 4x faster than `sort`. The matmul is exact in float32 (each
    output is one input times 1 plus zeros, so the output is an exact
    permutation of the input); on GPUs where TensorFloat-32 matmuls are
    enabled (TensorFlow's default on Ampere and later) it rounds the values
    to 10 mantissa bits, as every Dense/Conv layer there does. A non-finite
    input gives NaN in its block (inf * 0).

    Args:
        n: group size, an int >= 1 dividing the number of channels, or None
            for a full sort.
        k_coef_lip: Lipschitz constant of the layer (output multiplied by it).
        data_format: "channels_last" or None (the only layout supported).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

    Example:
    >>> layer = GroupSort(n=2)
    >>> layer(keras.ops.convert_to_tensor([[3.0, 1.0, -1.0, 2.0]]))  # [[1, 3, -1, 2]]
    """

    def __init__(self, n=None, k_coef_lip=1.0, data_format="channels_last", **kwargs):
        super().__init__(k_coef_lip=k_coef_lip, data_format=data_format, **kwargs)
        if n is not None and (isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1):
            raise ValueError(f"n must be None (full sort) or an int >= 1, got {n!r}.")
        self.n = None if n is None else int(n)

    def build(self, input_shape):
        channels = self._channels(input_shape)
        if self.n is not None and channels % self.n:
            raise ValueError(
                f"n={self.n} must divide the number of channels {channels} (input shape {tuple(input_shape)})."
            )
        self.group_size = channels if self.n is None else self.n
        if self.group_size == 2:
            # Pairs never straddle blocks of an even size, so the swap matmul works on blocks of at
            # most _MAX_SWAP_BLOCK channels: its cost per value stays constant as C grows.
            self._swap_block = max(b for b in range(2, min(channels, _MAX_SWAP_BLOCK) + 1, 2) if channels % b == 0)
            first_of_pair = np.arange(self._swap_block) % 2 == 0
            self._signs = np.where(first_of_pair, -1.0, 1.0)
            self._signed_swap = _pair_swap_matrix(self._swap_block) * self._signs[None, :]
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: channels})
        super().build(input_shape)

    def call(self, inputs):
        if self.group_size == 1:
            return self._scaled(inputs)
        if self.group_size == 2:
            return self._sort_pairs(inputs)
        if self.group_size == inputs.shape[-1]:
            return self._scaled(ops.sort(inputs, axis=-1))
        shape = ops.shape(inputs)
        groups = ops.reshape(inputs, (-1, self.group_size))
        return self._scaled(ops.reshape(ops.sort(groups, axis=-1), shape))

    def _sort_pairs(self, inputs):
        # s = -1 on the first channel of each pair, +1 on the second:
        # s * max(s * x, s * swap(x)) is (min, max) on every pair.
        signs = ops.convert_to_tensor(self._signs, dtype=inputs.dtype)
        signed_swap = ops.convert_to_tensor(self._signed_swap, dtype=inputs.dtype)
        shape = ops.shape(inputs)
        blocks = ops.reshape(inputs, (-1, self._swap_block))
        largest = ops.maximum(blocks * signs, ops.matmul(blocks, signed_swap))
        return ops.reshape(largest * (signs * ops.cast(self.k_coef_lip, inputs.dtype)), shape)

    def get_config(self):
        config = super().get_config()
        config["n"] = self.n
        return config


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class GroupSort2(GroupSort):
    """`GroupSort` with n=2: each pair of consecutive channels becomes (min, max).

    Args:
        **kwargs: `GroupSort` arguments except `n` (k_coef_lip, name, ...).

    Example:
    >>> model = keras.Sequential([keras.Input((8,)), SpectralDense(8), GroupSort2()])
    """

    def __init__(self, **kwargs):
        kwargs.pop("n", None)
        super().__init__(n=2, **kwargs)


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class FullSort(GroupSort):
    """`GroupSort` with n=None: sort the whole channel vector ascending.

    Args:
        **kwargs: `GroupSort` arguments except `n` (k_coef_lip, name, ...).

    Example:
    >>> FullSort()(keras.ops.convert_to_tensor([[3.0, 1.0, 2.0]]))  # [[1, 2, 3]]
    """

    def __init__(self, **kwargs):
        kwargs.pop("n", None)
        super().__init__(n=None, **kwargs)


def _split_halves(inputs):
    half = inputs.shape[-1] // 2
    return inputs[..., :half], inputs[..., half:]


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class MaxMin(_ChannelActivation):
    """Pairwise sort of the two channel halves: concat(max(a, b), min(a, b)), times `k_coef_lip`.

    With a = x[..., :C/2] and b = x[..., C/2:] (LConvNet/BCOP/orthogonium
    convention, the activation of all BCOP experiments). GNP and 1-Lipschitz;
    the same function as `GroupSort2` up to a fixed channel permutation.

    Note: deel-lip's (and deel-torchlip's) `MaxMin` is a different function,
    concat(relu(x), relu(-x)), which doubles the channels: use `CReLU` for it.

    Args:
        k_coef_lip: Lipschitz constant of the layer (output multiplied by it).
        data_format: "channels_last" or None (the only layout supported).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

    Example:
    >>> MaxMin()(keras.ops.convert_to_tensor([[1.0, 5.0, 3.0, 2.0]]))  # [[3, 5, 1, 2]]
    """

    def build(self, input_shape):
        channels = self._check_even_channels(input_shape)
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: channels})
        super().build(input_shape)

    def call(self, inputs):
        first, second = _split_halves(inputs)
        return self._scaled(ops.concatenate([ops.maximum(first, second), ops.minimum(first, second)], axis=-1))


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class CReLU(_ChannelActivation):
    """Concatenated ReLU: concat(relu(x), relu(-x)) along the channels, times `k_coef_lip`.

    Doubles the number of channels and preserves the norm of its input
    (`||CReLU(x)|| = ||x||`); 1-Lipschitz. This is deel-lip's `MaxMin`.

    Args:
        k_coef_lip: Lipschitz constant of the layer (output multiplied by it).
        data_format: "channels_last" or None (the only layout supported).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

    Example:
    >>> CReLU()(keras.ops.convert_to_tensor([[1.0, -2.0]]))  # [[1, 0, 0, 2]]
    """

    def call(self, inputs):
        return self._scaled(ops.concatenate([ops.relu(inputs), ops.relu(-inputs)], axis=-1))

    def compute_output_shape(self, input_shape):
        channels = input_shape[-1]
        return (*input_shape[:-1], None if channels is None else 2 * channels)


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class Householder(_ChannelActivation):
    """Householder activation (Singla, Singla and Feizi 2022), times `k_coef_lip`.

    The channels are split into halves z1 = x[..., :C/2], z2 = x[..., C/2:];
    each pair (z1, z2) is kept if z1 sin(theta/2) - z2 cos(theta/2) > 0 and
    otherwise reflected across the line at angle theta/2:
    (z1 cos(theta) + z2 sin(theta), z1 sin(theta) - z2 cos(theta)).
    Both branches agree on the boundary, so the map is continuous, piecewise
    orthogonal, GNP and 1-Lipschitz. One learned angle per pair: weight
    `theta` of shape (C/2,). At theta = pi/2 (the default) it equals
    `MaxMin`; at theta = 0 it maps (z1, z2) to (z1, -|z2|).
    Unlike deel-lip, `k_coef_lip` is applied.

    Args:
        theta_initializer: initializer of `theta` (default: constant pi/2).
        k_coef_lip: Lipschitz constant of the layer (output multiplied by it).
        data_format: "channels_last" or None (the only layout supported).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

    Example:
    >>> model = keras.Sequential([keras.Input((8,)), SpectralDense(8), Householder()])
    """

    def __init__(self, theta_initializer=None, k_coef_lip=1.0, data_format="channels_last", **kwargs):
        super().__init__(k_coef_lip=k_coef_lip, data_format=data_format, **kwargs)
        self.theta_initializer = keras.initializers.get(
            theta_initializer if theta_initializer is not None else keras.initializers.Constant(math.pi / 2)
        )

    def build(self, input_shape):
        channels = self._check_even_channels(input_shape)
        self.theta = self.add_weight(name="theta", shape=(channels // 2,), initializer=self.theta_initializer)
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: channels})
        super().build(input_shape)

    def call(self, inputs):
        z1, z2 = _split_halves(inputs)
        theta = ops.cast(self.theta, inputs.dtype)
        cos, sin = ops.cos(theta), ops.sin(theta)
        keep = z1 * ops.sin(theta / 2) - z2 * ops.cos(theta / 2) > 0
        reflected_1 = z1 * cos + z2 * sin
        reflected_2 = z1 * sin - z2 * cos
        outputs = ops.concatenate([ops.where(keep, z1, reflected_1), ops.where(keep, z2, reflected_2)], axis=-1)
        return self._scaled(outputs)

    def get_config(self):
        config = super().get_config()
        config["theta_initializer"] = keras.initializers.serialize(self.theta_initializer)
        return config
