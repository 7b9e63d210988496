"""Gradient-norm-preserving Lipschitz activations (channels-last).

Every layer here is exactly `k_coef_lip`-Lipschitz (L2): it computes k times
a function whose Jacobian is, almost everywhere, a permutation
(`GroupSort`, `MaxMinHalves`), a reflection (`Householder`) or a signed
selection (`MaxMin` = `CReLU`).

Channel pairing conventions (they matter when porting weights):

* `GroupSort(n)` sorts each group of `n` **consecutive** channels ascending
  (deel-lip). `GroupSort2` = `GroupSort(n=2)`: channels (0, 1), (2, 3), ...
  become (min, max) pairs. `FullSort` sorts the whole channel vector.
* `MaxMin` is deel-lip's (and deel-torchlip's): concat(relu(x), relu(-x)),
  which doubles the channels; `CReLU` is the same function.
* `MaxMinHalves` pairs channel i with channel i + C/2 (the two **halves** a,
  b) and returns concat(max(a, b), min(a, b)): the LConvNet/BCOP/orthogonium
  `MaxMin`. It is `GroupSort2` up to a fixed channel permutation. Before
  deel-lip-ext 0.2 it was called `MaxMin`; `.keras` files saved then still
  load (as `MaxMinHalves`), see the migration guide.
* `Householder` pairs the halves like `MaxMinHalves` and follows deel-lip's
  convention: at theta = pi/2 (the default) it returns (min, max) of each
  pair, i.e. `MaxMinHalves` with the two halves swapped.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext._validation import check_channels_last
from deel_lip_ext._xla import compiled_by_xla
from deel_lip_ext.layers.base import LipschitzLayer

__all__ = ["GroupSort", "GroupSort2", "FullSort", "MaxMin", "MaxMinHalves", "CReLU", "Householder"]


class _ChannelActivation(LipschitzLayer, keras.layers.Layer):
    """Plumbing shared by the activations: k, channels-last check, config, last-axis size."""

    def __init__(self, k_coef_lip: float = 1.0, data_format: str | None = None, **kwargs: Any):
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

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def _lipschitz_constant(self, norm, input_shape):
        # Sorting, pairwise max/min and CReLU are 1-Lipschitz in every l_p norm; times k.
        return self.k_coef_lip

    def _rounded_constants(self):
        return 0 if self.k_coef_lip == 1.0 else 1  # `_scale` multiplies by k only when k != 1

    def get_config(self):
        config = super().get_config()
        config.update({"k_coef_lip": self.k_coef_lip, "data_format": self.data_format})
        return config


# The elementwise activations below are compiled by XLA on TensorFlow. Why: without XLA, TensorFlow
# runs every op of an activation as its own pass over memory, and a pairwise sort needs four of them,
# while the ReLU of a plain model is fused into its convolution for free. Measured on a 2-core CPU,
# (256, 28, 28, 16) float32, CPU time per call: ReLU 3.2 ms, GroupSort2 unfused 8.8 ms (swap by a
# permutation matmul) to 16 ms (reshape + stack), fused 3.4 ms. XLA is slower than oneDNN for sorts
# and pooling, so only these elementwise activations are compiled.


def _scale(outputs, k_coef_lip):
    # No multiply at k = 1: the unfused path would pay a full pass over the tensor for it.
    return outputs if k_coef_lip == 1.0 else outputs * ops.convert_to_tensor(k_coef_lip, outputs.dtype)


def _keeps_own(pairs, axis, larger_first):
    """Whether each entry of the size-2 `axis` of `pairs` stays in place when the pair is sorted.

    Each entry is compared with its partner (the flipped tensor) and stays when it belongs at its
    position (the smaller one first, or the larger one first). Both entries of a pair decide alike
    (a <= b for one, b >= a for the other), ties included: a pair is kept or swapped as a whole.
    """
    partners = ops.flip(pairs, axis=axis)
    mask_shape = [1] * len(pairs.shape)
    mask_shape[axis] = 2
    wants_smaller = ops.convert_to_tensor(np.reshape([not larger_first, larger_first], mask_shape))
    return ops.where(wants_smaller, ops.less_equal(pairs, partners), ops.greater_equal(pairs, partners))


def _sort_pairs_along(pairs, axis, larger_first):
    """Sort the two entries of `pairs` along `axis` (of size 2).

    A select sends the whole gradient to the chosen entry, so on ties each entry keeps its own and
    the Jacobian stays a permutation (GNP) on every backend: `minimum`/`maximum` would split a
    tie's gradient in halves on JAX and torch (a rank-1 Jacobian), unlike TensorFlow.
    """
    return ops.where(_keeps_own(pairs, axis, larger_first), pairs, ops.flip(pairs, axis=axis))


def _sort_pairs_vjp_along(upstream, pairs, axis, larger_first):
    """The gradient of `_sort_pairs_along`: its Jacobian swaps the pairs it swapped (a symmetric permutation)."""
    return ops.where(_keeps_own(pairs, axis, larger_first), upstream, ops.flip(upstream, axis=axis))


# The fused functions take tensors of a fixed rank (the layers reshape around them, which is free),
# so that tf.function's relaxed retracing only ever generalizes the sizes, never the rank. Their
# gradients recompute which pairs swapped from the inputs, in one pass over the upstream gradient.


def _sorted_pairs_math(pairs, k_coef_lip):
    """(N, 2) -> (min, max) of each row."""
    return _scale(_sort_pairs_along(pairs, -1, larger_first=False), k_coef_lip)


def _sorted_pairs_vjp(upstream, pairs, k_coef_lip):
    return _scale(_sort_pairs_vjp_along(upstream, pairs, -1, larger_first=False), k_coef_lip)


def _max_min_halves_math(halves, k_coef_lip):
    """(N, 2, C/2) -> (max, min) along axis 1."""
    return _scale(_sort_pairs_along(halves, 1, larger_first=True), k_coef_lip)


def _max_min_halves_vjp(upstream, halves, k_coef_lip):
    return _scale(_sort_pairs_vjp_along(upstream, halves, 1, larger_first=True), k_coef_lip)


_sorted_pairs = compiled_by_xla(_sorted_pairs_math, vjp=_sorted_pairs_vjp)
_max_min_halves = compiled_by_xla(_max_min_halves_math, vjp=_max_min_halves_vjp)


@compiled_by_xla
def _crelu(vectors, k_coef_lip):
    """(N, C) -> (N, 2C)."""
    return _scale(ops.concatenate([ops.relu(vectors), ops.relu(-vectors)], axis=-1), k_coef_lip)


@compiled_by_xla
def _householder(halves, theta, k_coef_lip):
    """(N, 2, C/2) halves (z1, z2), angles (C/2,) -> (N, 2, C/2)."""
    z1, z2 = halves[:, 0], halves[:, 1]
    cos, sin = ops.cos(theta), ops.sin(theta)
    keep = z1 * ops.sin(theta / 2) - z2 * ops.cos(theta / 2) <= 0
    reflected_1 = z1 * cos + z2 * sin
    reflected_2 = z1 * sin - z2 * cos
    outputs = ops.stack([ops.where(keep, z1, reflected_1), ops.where(keep, z2, reflected_2)], axis=1)
    return _scale(outputs, k_coef_lip)


def _as_halves(inputs):
    """(..., C) -> (N, 2, C/2): row 0 holds the first half of the channels, row 1 the second."""
    return ops.reshape(inputs, (-1, 2, inputs.shape[-1] // 2))


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class GroupSort(_ChannelActivation):
    """Sort each group of `n` consecutive channels in ascending order, times `k_coef_lip`.

    GNP and 1-Lipschitz (Anil et al. 2019): the Jacobian is a permutation
    almost everywhere. `n=2` is `GroupSort2`, `n=None` (the whole channel
    vector) is `FullSort`.

    For n = 2 each channel is compared with its partner and keeps the min or
    the max, in one XLA-fused loop on TensorFlow (as fast as a standalone
    ReLU on CPU); the output is an exact permutation of the input. Other
    group sizes use `ops.sort` (slower: about 4x a pairwise sort).

    Args:
        n: group size, an int >= 1 dividing the number of channels, or None
            for a full sort; an `n` larger than the number of channels also
            sorts the whole channel vector (deel-lip).
        k_coef_lip: Lipschitz constant of the layer (output multiplied by it).
        data_format: "channels_last" or None (the only layout supported).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

    Examples:
        >>> layer = GroupSort(n=2)
        >>> layer(keras.ops.convert_to_tensor([[3.0, 1.0, -1.0, 2.0]]))  # [[1, 3, -1, 2]]
    """

    def __init__(
        self, n: int | None = None, k_coef_lip: float = 1.0, data_format: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(k_coef_lip=k_coef_lip, data_format=data_format, **kwargs)
        if n is not None and (isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1):
            raise ValueError(f"n must be None (full sort) or an int >= 1, got {n!r}.")
        self.n = None if n is None else int(n)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        channels = self._channels(input_shape)
        full_sort = self.n is None or self.n > channels  # deel-lip: n > channels is one group
        if not full_sort and channels % self.n:
            raise ValueError(
                f"n={self.n} must divide the number of channels {channels} (input shape {tuple(input_shape)}), "
                "or be None or larger than it (full sort)."
            )
        self.group_size = channels if full_sort else self.n
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: channels})
        super().build(input_shape)

    def call(self, inputs: ArrayLike):
        if self.group_size == 1:
            return _scale(inputs, self.k_coef_lip)
        if self.group_size == 2:
            return ops.reshape(_sorted_pairs(ops.reshape(inputs, (-1, 2)), self.k_coef_lip), ops.shape(inputs))
        if self.group_size == inputs.shape[-1]:
            return _scale(ops.sort(inputs, axis=-1), self.k_coef_lip)
        shape = ops.shape(inputs)
        groups = ops.reshape(inputs, (-1, self.group_size))
        return _scale(ops.reshape(ops.sort(groups, axis=-1), shape), self.k_coef_lip)

    def get_config(self) -> dict:
        config = super().get_config()
        config["n"] = self.n
        return config


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class GroupSort2(GroupSort):
    """`GroupSort` with n=2: each pair of consecutive channels becomes (min, max).

    Args:
        k_coef_lip: Lipschitz constant of the layer (output multiplied by it).
        data_format: "channels_last" or None (the only layout supported).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

    Examples:
        >>> model = keras.Sequential([keras.Input((8,)), SpectralDense(8), GroupSort2()])
    """

    def __init__(self, k_coef_lip: float = 1.0, data_format: str | None = None, **kwargs: Any) -> None:
        kwargs.pop("n", None)  # the config holds n=2 (GroupSort's)
        super().__init__(n=2, k_coef_lip=k_coef_lip, data_format=data_format, **kwargs)


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class FullSort(GroupSort):
    """`GroupSort` with n=None: sort the whole channel vector ascending.

    Args:
        k_coef_lip: Lipschitz constant of the layer (output multiplied by it).
        data_format: "channels_last" or None (the only layout supported).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

    Examples:
        >>> FullSort()(keras.ops.convert_to_tensor([[3.0, 1.0, 2.0]]))  # [[1, 2, 3]]
    """

    def __init__(self, k_coef_lip: float = 1.0, data_format: str | None = None, **kwargs: Any) -> None:
        kwargs.pop("n", None)  # the config holds n=None (GroupSort's)
        super().__init__(n=None, k_coef_lip=k_coef_lip, data_format=data_format, **kwargs)


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class MaxMinHalves(_ChannelActivation):
    """Pairwise sort of the two channel halves: concat(max(a, b), min(a, b)), times `k_coef_lip`.

    With a = x[..., :C/2] and b = x[..., C/2:] (LConvNet/BCOP/orthogonium
    `MaxMin` convention, the activation of all BCOP experiments). GNP and
    1-Lipschitz; the same function as `GroupSort2` up to a fixed channel
    permutation. Called `MaxMin` before deel-lip-ext 0.2; deel-lip's `MaxMin`
    is a different function (concat(relu(x), relu(-x))), which `MaxMin` now is.

    Args:
        k_coef_lip: Lipschitz constant of the layer (output multiplied by it).
        data_format: "channels_last" or None (the only layout supported).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

    Examples:
        >>> MaxMinHalves()(keras.ops.convert_to_tensor([[1.0, 5.0, 3.0, 2.0]]))  # [[3, 5, 1, 2]]
    """

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        channels = self._check_even_channels(input_shape)
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: channels})
        super().build(input_shape)

    def call(self, inputs: ArrayLike):
        return ops.reshape(_max_min_halves(_as_halves(inputs), self.k_coef_lip), ops.shape(inputs))


# `.keras` files written before the rename name this layer "deel_lip_ext>MaxMin": they keep loading the
# function they were saved with. The new `MaxMin` (deel-lip's) is registered as "deel_lip_ext>DeelLipMaxMin".
keras.saving.get_custom_objects()["deel_lip_ext>MaxMin"] = MaxMinHalves


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class CReLU(_ChannelActivation):
    """Concatenated ReLU: concat(relu(x), relu(-x)) along the channels, times `k_coef_lip`.

    Doubles the number of channels and preserves the norm of its input
    (`||CReLU(x)|| = ||x||`); 1-Lipschitz. The same function as `MaxMin` (deel-lip's name).

    Args:
        k_coef_lip: Lipschitz constant of the layer (output multiplied by it).
        data_format: "channels_last" or None (the only layout supported).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

    Examples:
        >>> CReLU()(keras.ops.convert_to_tensor([[1.0, -2.0]]))  # [[1, 0, 0, 2]]
    """

    def call(self, inputs: ArrayLike):
        shape = ops.shape(inputs)
        outputs = _crelu(ops.reshape(inputs, (-1, inputs.shape[-1])), self.k_coef_lip)
        return ops.reshape(outputs, (*shape[:-1], 2 * inputs.shape[-1]))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]):
        channels = input_shape[-1]
        return (*input_shape[:-1], None if channels is None else 2 * channels)


@keras.saving.register_keras_serializable(package="deel_lip_ext", name="DeelLipMaxMin")
class MaxMin(CReLU):
    """deel-lip's `MaxMin`: concat(relu(x), relu(-x)) along the channels, times `k_coef_lip`.

    Same semantics as deel-lip and deel-torchlip (the channels double); the
    same function as `CReLU`. The halves-pairing activation of the BCOP paper
    (called `MaxMin` in orthogonium and in deel-lip-ext before 0.2) is
    `MaxMinHalves`. Channels-last only (deel-lip also accepts channels_first).

    Args:
        k_coef_lip: Lipschitz constant of the layer (output multiplied by it).
        data_format: "channels_last" or None (the only layout supported).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

    Examples:
        >>> MaxMin()(keras.ops.convert_to_tensor([[1.0, -2.0]]))  # [[1, 0, 0, 2]]
    """


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class Householder(_ChannelActivation):
    """Householder activation (Singla, Singla and Feizi 2022), times `k_coef_lip`.

    The channels are split into halves z1 = x[..., :C/2], z2 = x[..., C/2:];
    each pair (z1, z2) is kept if z1 sin(theta/2) - z2 cos(theta/2) <= 0 and
    otherwise reflected across the line at angle theta/2:
    (z1 cos(theta) + z2 sin(theta), z1 sin(theta) - z2 cos(theta))
    (deel-lip's and deel-torchlip's half-planes). Both branches agree on the
    boundary, so the map is continuous, piecewise orthogonal, GNP and
    1-Lipschitz. One learned angle per pair: weight `theta` of shape (C/2,).
    At theta = pi/2 (the default) each pair becomes (min, max); at theta = 0
    it maps (z1, z2) to (z1, |z2|). Unlike deel-lip, `k_coef_lip` is applied.

    Args:
        theta_initializer: initializer of `theta` (default: constant pi/2).
        k_coef_lip: Lipschitz constant of the layer (output multiplied by it).
        data_format: "channels_last" or None (the only layout supported).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

    Examples:
        >>> model = keras.Sequential([keras.Input((8,)), SpectralDense(8), Householder()])
    """

    def __init__(
        self,
        theta_initializer: str | keras.initializers.Initializer | None = None,
        k_coef_lip: float = 1.0,
        data_format: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(k_coef_lip=k_coef_lip, data_format=data_format, **kwargs)
        self.theta_initializer = keras.initializers.get(
            theta_initializer if theta_initializer is not None else keras.initializers.Constant(math.pi / 2)
        )

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        channels = self._check_even_channels(input_shape)
        self.theta = self.add_weight(name="theta", shape=(channels // 2,), initializer=self.theta_initializer)
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: channels})
        super().build(input_shape)

    def call(self, inputs: ArrayLike):
        # A tensor, not the Keras variable: tf.function traces tensors, variables it would try to read as numpy.
        theta = ops.cast(self.theta, inputs.dtype)
        outputs = _householder(_as_halves(inputs), theta, self.k_coef_lip)
        return ops.reshape(outputs, ops.shape(inputs))

    def _lipschitz_constant(self, norm, input_shape):
        # Piecewise identity / 2-D reflection [[cos, sin], [sin, -cos]] on each pair: an isometry in L2,
        # l_inf norm |cos| + |sin| <= sqrt(2) on each piece of this continuous piecewise-linear map.
        return self.k_coef_lip * (1.0 if norm == "l2" else math.sqrt(2.0))

    def _rounded_constants(self):
        # cos and sin of the rounded angle, each rounded (and evaluated within a unit roundoff): the
        # reflection's norm sqrt(cos^2 + sin^2) grows by at most two unit roundoffs; then k.
        return 2 + super()._rounded_constants()

    def get_config(self):
        config = super().get_config()
        config["theta_initializer"] = keras.initializers.serialize(self.theta_initializer)
        return config
