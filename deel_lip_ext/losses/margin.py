"""Margin-shifted cross-entropies of LiResNet and BRONet: EMMA and Logit Annealing."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import keras
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext._saving import config_without
from deel_lip_ext.losses.base import (
    _ParametrizedLoss,
    _check_nonnegative,
    _check_positive,
    _target_mask,
    one_hot_labels,
)

__all__ = ["dense_pairwise_lipschitz", "EMMA", "LogitAnnealing"]


def dense_pairwise_lipschitz(kernel: ArrayLike, body_lipschitz: float = 1.0) -> Any:
    """Lipschitz constants K_ij of f_i - f_j for logits f = body(x) @ kernel + b: body_lipschitz * ||w_i - w_j||.

    Args:
        kernel: the last dense layer's kernel (n, C) (e.g. its `effective_kernel()`).
        body_lipschitz: Lipschitz constant of the network before that layer (e.g. `model_lipschitz_bound`).

    Returns:
        A (C, C) tensor with a zero diagonal.
    """
    kernel = ops.convert_to_tensor(kernel)
    differences = ops.expand_dims(kernel, -1) - ops.expand_dims(kernel, -2)  # (n, C, C)
    squared = ops.sum(ops.square(differences), axis=0)
    # The diagonal is 0, where sqrt's derivative is infinite: 0 * inf would put NaN in EMMA's gradient
    # (which flows through K); the norm's subgradient at 0 is 0, as torch's `norm` gives.
    nonzero = ops.greater(squared, 0.0)
    return body_lipschitz * ops.where(nonzero, ops.sqrt(ops.where(nonzero, squared, 1.0)), 0.0)


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class EMMA(_ParametrizedLoss):
    """Efficient Margin MAximization (LiResNet, Hu et al. 2023): cross-entropy on margin-shifted logits.

    With K_yj a bound of the Lipschitz constant of f_y - f_j, the pair's
    certified radius (f_y - f_j) / K_yj is capped at epsilon and floored at
    0.01 epsilon: e_j = clip((f_y - f_j) / (epsilon K_yj), 0.01, 1) (no
    gradient through e_j), and each non-target logit is raised by
    e_j * epsilon * K_yj, its worst value within that radius (the reference
    implementation's formula, hukkai/liresnet and ntuaislab/BRONet; as there,
    the gradient flows through K when the callable computes it from the
    model's weights, which also pulls the head's rows together):

        loss = CE(softmax(z), y),  z_j = f_j + e_j epsilon K_yj (j != y),  z_y = f_y

    K is either one number (`lipschitz`, the same for every pair: sqrt(2) L
    for an L-Lipschitz network in L2) or a callable returning the (C, C)
    matrix, e.g. `lambda: dense_pairwise_lipschitz(head.effective_kernel(), body_bound)`
    (a callable is not saved: loading a model compiled with it asks to compile it again).

    Args:
        epsilon: certification radius targeted (>= 0); schedulable.
        lipschitz: a number > 0 (K_yj for every pair) or a callable returning the (C, C) matrix K.
        reduction: as in `keras.losses.Loss`.
        name: as in `keras.losses.Loss`.
        dtype: as in `keras.losses.Loss`.

    Examples:
        >>> model.compile(optimizer="adam", loss=EMMA(epsilon=36 / 255, lipschitz=math.sqrt(2)))
    """

    _labels = staticmethod(one_hot_labels)

    _params = ("epsilon",)

    def __init__(
        self,
        epsilon: float,
        lipschitz: float | Callable = math.sqrt(2.0),
        reduction: str = "sum_over_batch_size",
        name: str = "EMMA",
        dtype: str | None = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not callable(lipschitz):
            lipschitz = _check_positive("lipschitz", lipschitz)
        self.lipschitz = lipschitz
        self._set_params(epsilon=_check_nonnegative("epsilon", epsilon))

    def _pair_constants(self, target, dtype):
        if not callable(self.lipschitz):
            return ops.full_like(target, self.lipschitz)
        matrix = ops.cast(ops.convert_to_tensor(self.lipschitz()), dtype)  # the callable may return numpy
        return ops.matmul(target, matrix)  # row y of K for each sample

    def shifted_logits(self, target: ArrayLike, y_pred: ArrayLike):
        """The logits z (relative to the target logit) of the formula, for a 0/1 target mask."""
        relative = y_pred - ops.sum(y_pred * target, axis=-1, keepdims=True)
        margin = self._param("epsilon", y_pred.dtype) * self._pair_constants(target, y_pred.dtype) * (1.0 - target)
        # Where the margin is 0 (the target column, epsilon = 0) radius * margin is 0 whatever the radius:
        # dividing by 1 there keeps float16 finite (its floor 1e-8 rounds to 0, and 0 / 0 is NaN).
        positive = ops.greater(margin, 0.0)
        divisor = ops.where(positive, margin, ops.ones_like(margin))
        radius = ops.stop_gradient(ops.clip(-relative / divisor, 0.01, 1.0))
        return relative + radius * margin

    def call(self, y_true: ArrayLike, y_pred: ArrayLike):
        target = _target_mask(self._labels(y_true, y_pred, self.name), y_pred)
        return keras.losses.categorical_crossentropy(target, self.shifted_logits(target, y_pred), from_logits=True)

    def get_config(self) -> dict:
        config = super().get_config()
        if not callable(self.lipschitz):
            return {**config, "lipschitz": self.lipschitz}
        return config_without(config, "lipschitz", f"{type(self).__name__}(..., lipschitz=<the callable>)")


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class LogitAnnealing(EMMA):
    """Logit Annealing loss (BRONet, Lai et al., ICML 2025) on EMMA's shifted logits.

    With z the logits of `EMMA` and o = (z - offset * onehot(y)) / temperature,
    CE = -log softmax(o)_y and p = exp(-CE):

        loss = temperature * (1 - p)^gamma * CE

    (a focal-style factor that anneals the push on samples already far from
    the decision boundary).

    Args:
        epsilon: certification radius targeted (>= 0); schedulable.
        lipschitz: as in `EMMA`.
        gamma: annealing exponent (>= 0).
        offset: margin subtracted from the target logit.
        temperature: softmax temperature (> 0).
        reduction: as in `keras.losses.Loss`.
        name: as in `keras.losses.Loss`.
        dtype: as in `keras.losses.Loss`.

    Examples:
        >>> model.compile(optimizer="adam", loss=LogitAnnealing(epsilon=36 / 255, lipschitz=math.sqrt(2)))
    """

    def __init__(
        self,
        epsilon: float,
        lipschitz: float | Callable = math.sqrt(2.0),
        gamma: float = 5.0,
        offset: float = 2.0,
        temperature: float = 0.75,
        reduction: str = "sum_over_batch_size",
        name: str = "LogitAnnealing",
        dtype: str | None = None,
    ) -> None:
        super().__init__(epsilon, lipschitz, reduction=reduction, name=name, dtype=dtype)
        self.gamma = _check_nonnegative("gamma", gamma)
        self.offset = _check_nonnegative("offset", offset)
        self.temperature = _check_positive("temperature", temperature)

    def call(self, y_true: ArrayLike, y_pred: ArrayLike):
        target = _target_mask(self._labels(y_true, y_pred, self.name), y_pred)
        logits = (self.shifted_logits(target, y_pred) - self.offset * target) / self.temperature
        cross_entropy = keras.losses.categorical_crossentropy(target, logits, from_logits=True)
        return self.temperature * (1.0 - ops.exp(-cross_entropy)) ** self.gamma * cross_entropy

    def get_config(self) -> dict:
        return {**super().get_config(), "gamma": self.gamma, "offset": self.offset, "temperature": self.temperature}
