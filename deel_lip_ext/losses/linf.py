"""Losses of l_inf-dist nets (Zhang et al., ICML 2021; ICLR 2022) on the worst-case margins of the eps-ball.

`LInfDistHinge` (v1), `ClippedHingeCrossEntropy` (v2: clipped hinge with
threshold 2 eps plus a decaying cross-entropy on s * logits, s learnable) and
`HybridIntervalCrossEntropy` (v1 "l_inf-dist Net + MLP": cross-entropy on
interval-arithmetic margins of the MLP head). Epsilons are in the units of the
logits' Lipschitz bound, i.e. of the inputs of the first l_inf-dist layer
(pixel eps / std when the model starts with a `Rescaling(1 / std)`).

Labels are class indices or one-hot rows; a label naming no class of the
logits or several (an index outside [0, C), soft labels) gives a NaN loss for
its sample, on every backend (`losses.base.nan_where_invalid`).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext._saving import config_without
from deel_lip_ext._validation import ArgumentTypeError, check_number
from deel_lip_ext.interval import chain_layers, elided_margins
from deel_lip_ext.layers.linf import LogitScale
from deel_lip_ext.losses.base import _ParametrizedLoss, nan_where_invalid

__all__ = ["worst_case_margins", "LInfDistHinge", "ClippedHingeCrossEntropy", "HybridIntervalCrossEntropy"]


def _target_mask(y_true, y_pred):
    """Boolean (N, C) mask of the true class from indices (N,) / (N, 1) or one-hot (N, C) labels.

    The shapes are checked at trace time against the predictions (N, C): any
    other label shape is a `ValueError`, never a broadcast.
    """
    y_true = ops.convert_to_tensor(y_true)
    batch, num_classes = y_pred.shape[0], y_pred.shape[-1]
    rank, last = len(y_true.shape), (y_true.shape[-1] if len(y_true.shape) else None)
    one_hot = rank == 2 and last == num_classes and num_classes > 1
    if not (one_hot or rank == 1 or (rank == 2 and last == 1)) or (
        batch is not None and y_true.shape[0] is not None and y_true.shape[0] != batch
    ):
        raise ValueError(
            f"l_inf-dist losses take labels of class indices (N,) or (N, 1), or one-hot labels (N, {num_classes}), "
            f"for predictions of shape {tuple(y_pred.shape)}; got labels of shape {tuple(y_true.shape)}."
        )
    if one_hot:
        return ops.greater(y_true, 0)
    return ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), num_classes) > 0.5


def worst_case_margins(y_true: ArrayLike, y_pred: ArrayLike, eps: float) -> Any:
    """m_j = (g_j + eps) - (g_t - eps) for j != t and m_t = 0: logits of an l_inf-1-Lipschitz net in the eps-ball.

    A sample is robust at eps when every m_j < 0, i.e. margin / 2 > eps.

    Args:
        y_true: class indices (N,) / (N, 1) or one-hot labels (N, C).
        y_pred: logits g, tensor (N, C).
        eps: l_inf radius, in the logits' Lipschitz units (a number or a scalar tensor).

    Returns:
        A tensor (N, C).

    Examples:
        >>> worst_case_margins(np.array([0]), np.array([[3.0, 1.0]]), 0.5)  # [[0, -1]]
    """
    y_pred = ops.convert_to_tensor(y_pred)
    is_target = _target_mask(y_true, y_pred)
    target_logit = ops.sum(ops.where(is_target, y_pred, 0.0), axis=-1, keepdims=True)
    return ops.where(is_target, 0.0, y_pred - target_logit + 2.0 * eps)


def _cross_entropy(y_true, logits):
    """Softmax cross-entropy per sample, from the target mask."""
    is_target = _target_mask(y_true, logits)
    target_logit = ops.sum(ops.where(is_target, logits, 0.0), axis=-1)
    return ops.logsumexp(logits, axis=-1) - target_logit


def _with_one_target(losses, y_true, y_pred):
    """Per-sample `losses`, NaN where a label names no class of `y_pred` or several (an index outside [0, C),
    a row of zeros, soft labels): `nan_where_invalid`."""
    targets = ops.sum(ops.cast(_target_mask(y_true, y_pred), "int32"), axis=-1)
    return nan_where_invalid(losses, ops.equal(targets, 1))


class _EpsLoss(_ParametrizedLoss):
    """A loss with its eps in a non-trainable variable, so that `LossParamScheduler("eps", ...)` can ramp it."""

    _params = ("eps",)

    def __init__(self, eps, name, reduction="sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction)
        self._set_params(eps=check_number(eps, "eps", minimum=0))

    def _eps(self, dtype):
        return self._param("eps", dtype)


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class LInfDistHinge(_EpsLoss):
    """v1 l_inf-dist Net loss: hinge on the worst-case margins, threshold 2 eps.

    Per sample: mix * max_j relu(m_j) + (1 - mix) * mean_j relu(m_j), with
    m = `worst_case_margins(y, logits, eps)` (the mean runs over all C
    entries, including m_t = 0, as in the v1 code).

    Args:
        eps: training radius in logit-Lipschitz units (v1 MNIST: 0.45 / 0.3081).
        mix: weight of the max term (0.75 for MNIST and CIFAR, 1 for FMNIST).
        name: as in `keras.losses.Loss`.
        reduction: as in `keras.losses.Loss`.

    Examples:
        >>> model.compile(optimizer="adam", loss=LInfDistHinge(eps=0.45 / 0.3081))
    """

    def __init__(
        self, eps: float, mix: float = 0.75, name: str = "linf_dist_hinge", reduction: str = "sum_over_batch_size"
    ) -> None:
        super().__init__(eps, name=name, reduction=reduction)
        self.mix = check_number(mix, "mix", minimum=0, maximum=1)

    def call(self, y_true: ArrayLike, y_pred: ArrayLike):
        violations = ops.relu(worst_case_margins(y_true, y_pred, self._eps(y_pred.dtype)))
        losses = self.mix * ops.max(violations, axis=-1) + (1.0 - self.mix) * ops.mean(violations, axis=-1)
        return _with_one_target(losses, y_true, y_pred)

    def get_config(self) -> dict:
        config = super().get_config()
        config["mix"] = self.mix
        return config


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class ClippedHingeCrossEntropy(_EpsLoss):
    """v2 l_inf-dist Net loss: clip(max_j m_j / (2 eps), 0, 1) + lambda * CE(s * logits, y).

    The first term is the hinge with threshold 2 eps, normalized and clipped
    at 1, so misclassified points learn only from the cross-entropy. lambda
    decays geometrically from `ce_weight_start` to `ce_weight_end` along the
    p-schedule ratio r (`set_progress`, called by `LpScheduler(followers=[loss])`).
    s is `logit_scale.scale` of a `LogitScale` layer of the model (1 if None).

    Args:
        eps: training radius in logit-Lipschitz units (v2 MNIST 0.3: 0.45 / 0.3081).
        ce_weight_start: cross-entropy weight lambda at r = 0 (MNIST: 0.05).
        ce_weight_end: cross-entropy weight lambda at r = 1 (MNIST: 2e-4).
        logit_scale: the model's `LogitScale` layer, or None.
        name: as in `keras.losses.Loss`.
        reduction: as in `keras.losses.Loss`.

    Examples:
        >>> model = linf_dist_net(5, 128, logit_scale=True)
        >>> loss = ClippedHingeCrossEntropy(1.46, logit_scale=model.layers[-1])
        >>> model.compile(optimizer="adam", loss=loss)
    """

    _params = ("eps", "ce_weight")
    _state = ("ce_weight",)  # the schedule's progress, saved with the loss

    def __init__(
        self,
        eps: float,
        ce_weight_start: float = 0.05,
        ce_weight_end: float = 2e-4,
        logit_scale: keras.layers.Layer | None = None,
        name: str = "clipped_hinge_cross_entropy",
        reduction: str = "sum_over_batch_size",
    ) -> None:
        super().__init__(eps, name=name, reduction=reduction)
        if check_number(eps, "eps") == 0:
            raise ValueError("eps must be > 0: the hinge is normalized by 2 eps.")
        self.ce_weight_start = check_number(ce_weight_start, "ce_weight_start", minimum=0, strict=True)
        self.ce_weight_end = check_number(ce_weight_end, "ce_weight_end", minimum=0, strict=True)
        if logit_scale is not None and not isinstance(logit_scale, LogitScale):
            raise ArgumentTypeError(f"logit_scale must be a LogitScale layer or None, got {logit_scale!r}.")
        self.logit_scale = logit_scale
        self._set_params(ce_weight=self.ce_weight_start)

    def set_progress(self, ratio: float):
        """lambda = start * (end / start) ** ratio, ratio in [0, 1]."""
        ratio = float(np.clip(ratio, 0.0, 1.0))
        self.ce_weight.assign(self.ce_weight_start * (self.ce_weight_end / self.ce_weight_start) ** ratio)

    def call(self, y_true: ArrayLike, y_pred: ArrayLike):
        eps = self._eps(y_pred.dtype)
        hinge = ops.clip(ops.max(worst_case_margins(y_true, y_pred, eps), axis=-1) / (2.0 * eps), 0.0, 1.0)
        scale = 1.0 if self.logit_scale is None else ops.cast(self.logit_scale.scale, y_pred.dtype)
        losses = hinge + self._param("ce_weight", y_pred.dtype) * _cross_entropy(y_true, scale * y_pred)
        return _with_one_target(losses, y_true, y_pred)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"ce_weight_start": self.ce_weight_start, "ce_weight_end": self.ce_weight_end})
        if self.logit_scale is None:
            return config
        fix = "ClippedHingeCrossEntropy(..., logit_scale=<the loaded model's LogitScale layer>)"
        return config_without(config, "logit_scale", fix)


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class HybridIntervalCrossEntropy(_EpsLoss):
    """v1 "l_inf-dist Net + MLP" loss: kappa * CE(interval margins) + (1 - kappa) * CE(logits).

    `y_pred` are the features of the l_inf-dist part. The feature extractor
    is 1-Lipschitz in l_inf, so the features of the eps-ball lie in
    [f - eps, f + eps]; the head is bounded by interval arithmetic on that box
    with the last Dense layer elided (upper bounds of z_j - z_t directly).
    Train a model that outputs the logits and the features
    (`deel_lip_ext.zoo.hybrid_training_model(model)`) with this loss on the
    features only.

    Args:
        head: the head's layers (a list) or a model: Dense, monotone
            activations ..., ending with a linear Dense.
        eps: training radius in feature units (v1 MNIST: 0.35 / 0.3081).
        kappa: weight of the worst-case term (0.5 for MNIST/FMNIST, 1 for CIFAR).
        name: as in `keras.losses.Loss`.
        reduction: as in `keras.losses.Loss`.

    Examples:
        >>> model = zoo.linf_dist_net_mlp(4, 128)
        >>> train_model = zoo.hybrid_training_model(model)
        >>> loss = HybridIntervalCrossEntropy(zoo.hybrid_head(model), eps=0.35 / 0.3081)
        >>> train_model.compile("adam", loss={"features": loss, "logits": None})
    """

    def __init__(
        self,
        head: keras.Model,
        eps: float,
        kappa: float = 0.5,
        name: str = "hybrid_interval_cross_entropy",
        reduction: str = "sum_over_batch_size",
    ) -> None:
        super().__init__(eps, name=name, reduction=reduction)
        self.head = chain_layers(head)
        if not self.head or type(self.head[-1]) is not keras.layers.Dense:
            raise ValueError("head must end with a keras.layers.Dense layer (its weights give the elided margins).")
        self.kappa = check_number(kappa, "kappa", minimum=0, maximum=1)

    def call(self, y_true: ArrayLike, y_pred: ArrayLike):
        logits = y_pred
        for layer in self.head:
            logits = layer(logits)
        eps = self._eps(y_pred.dtype)
        margins = elided_margins(self.head, y_pred - eps, y_pred + eps, _target_mask(y_true, logits))
        losses = self.kappa * _cross_entropy(y_true, margins) + (1.0 - self.kappa) * _cross_entropy(y_true, logits)
        return _with_one_target(losses, y_true, logits)

    def get_config(self) -> dict:
        config = {**super().get_config(), "kappa": self.kappa}
        fix = "HybridIntervalCrossEntropy(zoo.hybrid_head(model), ...)"
        return config_without(config, "head", fix)
