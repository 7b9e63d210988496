"""Softmax-weighted and log-sum-exp HKR losses: deel-lip's MulticlassSoftHKR, deel-torchlip's SoftHKR and LseHKR."""

from __future__ import annotations

import math

import keras
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext._validation import check_number

from deel_lip_ext.losses.base import (
    _ParametrizedLoss,
    _check_positive,
    _target_mask,
    one_hot_labels,
)

__all__ = ["MulticlassSoftHKR", "SoftHKR", "LseHKR"]


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class MulticlassSoftHKR(_ParametrizedLoss):
    r"""Multi-class HKR whose non-target classes are weighted by a softmax (deel-lip 1.5, for many classes).

    Per sample, with s_j = +1 for the target class and -1 otherwise, weights
    w_y = 1 and $w_j = \mathrm{softmax}_{j \ne y}(t f_j)$, and the temperature
    t = clip(temperature * m / clip(mu, m, 20000), 0.005, 250) (no gradient):

        loss = (1 / alpha) sum_j w_j (-s_j f_j) + sum_j w_j relu(m/2 - s_j f_j)

    (alpha = inf: the soft hinge alone). mu is a running mean of |f| updated
    by every call: mu <- clip(alpha_mean mu + (1 - alpha_mean) mean|f|,
    0.005, 1000), starting at m; it lives in the non-trainable variable
    `current_mean`. Being stateful, the loss of a batch depends on the
    batches seen before, as in deel-lip. On JAX call
    `deel_lip_ext.losses.carry_loss_state(model)` after `compile`: JAX's train
    step is a pure function of the model's state, and without it the running
    mean stays a constant.

    Args:
        alpha: weight of the hinge relative to the KR term (> 0, inf allowed); schedulable.
        min_margin: hinge margin m (> 0); schedulable.
        alpha_mean: momentum of the running mean of |f|, in [0, 1].
        temperature: softmax temperature factor (> 0).
        reduction: as in `keras.losses.Loss`.
        name: name of the loss.
        dtype: as in `keras.losses.Loss`.

    Examples:
        >>> model.compile(optimizer="adam", loss=MulticlassSoftHKR(alpha=10.0, min_margin=1.0))
    """

    _params = ("alpha", "min_margin")

    def __init__(
        self,
        alpha: float = 10.0,
        min_margin: float = 1.0,
        alpha_mean: float = 0.99,
        temperature: float = 1.0,
        reduction: str | None = "sum_over_batch_size",
        name: str = "MulticlassSoftHKR",
        dtype: str | None = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if alpha is None or not float(alpha) > 0:
            raise ValueError(f"alpha must be a number > 0 (inf: hinge only), got {alpha!r}.")
        if alpha_mean is None or not 0.0 <= float(alpha_mean) <= 1.0:
            raise ValueError(f"alpha_mean must be in [0, 1], got {alpha_mean!r}.")
        self._set_params(alpha=float(alpha), min_margin=_check_positive("min_margin", min_margin))
        self.alpha_mean = float(alpha_mean)
        self.temperature = _check_positive("temperature", temperature)
        self.current_mean = keras.Variable(float(min_margin), dtype="float32", trainable=False, name="current_mean")

    def _softmax_weights(self, target, y_pred):
        """w_y = 1, w_j = softmax over the other classes of t f_j; updates the running mean."""
        min_margin = self._param("min_margin", "float32")
        batch_mean = ops.mean(ops.abs(ops.stop_gradient(ops.cast(y_pred, "float32"))))
        mean = ops.clip(self.alpha_mean * self.current_mean + (1.0 - self.alpha_mean) * batch_mean, 0.005, 1000.0)
        self.current_mean.assign(mean)
        scale = ops.clip(mean, min_margin, 20000.0)
        temperature = ops.cast(ops.clip(self.temperature * min_margin / scale, 0.005, 250.0), y_pred.dtype)
        logits = temperature * y_pred
        # Softmax over the non-target classes: the target logit is replaced by the row minimum before the
        # max shift (a finite value in every dtype), then excluded from the sum.
        masked = ops.where(target > 0, ops.min(logits, axis=-1, keepdims=True), logits)
        exp = ops.exp(masked - ops.max(masked, axis=-1, keepdims=True)) * (1.0 - target)
        softmax = exp / ops.sum(exp, axis=-1, keepdims=True)
        return ops.where(target > 0, ops.ones_like(y_pred), softmax)

    def _soft_terms(self, target, y_pred):
        """Per-sample (soft hinge, soft KR) terms; updates the running mean."""
        weights = self._softmax_weights(target, y_pred)
        signed = y_pred * (2.0 * target - 1.0)
        hinge = ops.sum(weights * ops.relu(self._param("min_margin", y_pred.dtype) / 2.0 - signed), axis=-1)
        return hinge, ops.sum(weights * -signed, axis=-1)

    def call(self, y_true: ArrayLike, y_pred: ArrayLike):
        hinge, kr = self._soft_terms(_target_mask(one_hot_labels(y_true, y_pred, self.name), y_pred), y_pred)
        alpha = ops.convert_to_tensor(self.alpha)  # a keras.Variable: JAX's isinf/zeros_like take arrays only
        inverse_alpha = ops.cast(ops.where(ops.isinf(alpha), ops.zeros_like(alpha), 1.0 / alpha), y_pred.dtype)
        return hinge + inverse_alpha * kr

    def get_config(self):
        return {**super().get_config(), "alpha_mean": self.alpha_mean, "temperature": self.temperature}


# ---------------------------------------------------------------- deel-torchlip HKR variants


def _check_unit_interval(name, value):
    """A weight in [0, 1] (deel-torchlip's convention)."""
    return check_number(value, name, minimum=0, maximum=1)


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class SoftHKR(MulticlassSoftHKR):
    """deel-torchlip's `SoftHKRMulticlassLoss`: (1 - alpha) * soft KR + alpha * soft hinge, alpha in [0, 1].

    The soft terms, the softmax weights over the non-target classes and the
    running mean of |f| are those of `MulticlassSoftHKR` (deel-lip's loss,
    alpha_deel_lip = alpha / (1 - alpha), up to the factor alpha); only the
    weighting follows torchlip: alpha = 0 is the soft KR alone, alpha = 1 the
    soft hinge alone. Labels are one-hot (or +/-1 one-hot), shaped as the logits.
    Stateful like `MulticlassSoftHKR` (not on JAX).

    Args:
        alpha: weight of the hinge, in [0, 1]; schedulable.
        min_margin: hinge margin m (> 0); schedulable.
        alpha_mean: momentum of the running mean of |f|, in [0, 1].
        temperature: softmax temperature factor (> 0).
        reduction: as in `keras.losses.Loss`.
        name: as in `keras.losses.Loss`.
        dtype: as in `keras.losses.Loss`.

    Examples:
        >>> model.compile(optimizer="adam", loss=SoftHKR(alpha=0.9, min_margin=1.0))
    """

    _labels = staticmethod(one_hot_labels)

    def __init__(
        self,
        alpha: float = 0.9,
        min_margin: float = 1.0,
        alpha_mean: float = 0.99,
        temperature: float = 1.0,
        reduction: str = "sum_over_batch_size",
        name: str = "SoftHKR",
        dtype: str | None = None,
    ) -> None:
        alpha = _check_unit_interval("alpha", alpha)
        super().__init__(1.0, min_margin, alpha_mean, temperature, reduction=reduction, name=name, dtype=dtype)
        self._set_params(alpha=alpha)

    def call(self, y_true: ArrayLike, y_pred: ArrayLike):
        target = _target_mask(self._labels(y_true, y_pred, self.name), y_pred)
        hinge, kr = self._soft_terms(target, y_pred)
        alpha = self._param("alpha", y_pred.dtype)
        return (1.0 - alpha) * kr + alpha * hinge


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class LseHKR(_ParametrizedLoss):
    r"""deel-torchlip's `LseHKRMulticlassLoss`: HKR on the target logit against a log-sum-exp of the others.

    With g = temperature * f, the target logit g_y and
    $\mathrm{lse} = \frac{1}{t} \log \sum_{j \ne y} e^{t g_j}$, $t = \log(C - 1) / (\mathrm{penalty} \cdot m / 2)$
    (so $\max_j g_j \le \mathrm{lse} \le \max_j g_j + \mathrm{penalty} \cdot m / 2$):

        loss = (1 - alpha) (lse - g_y) + alpha (relu(m/2 - g_y) + relu(m/2 + lse))

    With two classes the sum has one term and lse is the other logit.

    Args:
        alpha: weight of the hinge, in [0, 1] (torchlip's convention); schedulable.
        temperature: factor applied to the logits (> 0).
        penalty: slack of the log-sum-exp over the max, in margins (> 0).
        min_margin: hinge margin m (> 0); schedulable.
        reduction: as in `keras.losses.Loss`.
        name: as in `keras.losses.Loss`.
        dtype: as in `keras.losses.Loss`.

    Examples:
        >>> model.compile(optimizer="adam", loss=LseHKR(alpha=0.9, min_margin=1.0))
    """

    _labels = staticmethod(one_hot_labels)

    _params = ("alpha", "min_margin")

    def __init__(
        self,
        alpha: float = 1.0,
        temperature: float = 1.0,
        penalty: float = 1.0,
        min_margin: float = 1.0,
        reduction: str = "sum_over_batch_size",
        name: str = "LseHKR",
        dtype: str | None = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.temperature = _check_positive("temperature", temperature)
        self.penalty = _check_positive("penalty", penalty)
        self._set_params(
            alpha=_check_unit_interval("alpha", alpha), min_margin=_check_positive("min_margin", min_margin)
        )

    def call(self, y_true: ArrayLike, y_pred: ArrayLike):
        target = _target_mask(self._labels(y_true, y_pred, self.name), y_pred)
        logits = y_pred * self.temperature
        margin = self._param("min_margin", y_pred.dtype)
        positive = ops.sum(logits * target, axis=-1)
        classes = y_pred.shape[-1]
        if classes is not None and classes < 2:
            raise ValueError(
                f"{self.name} compares the target logit with the others: it needs logits of at least 2 classes, "
                f"got predictions of shape {tuple(y_pred.shape)}; for one output use HKR (labels in {{-1, 1}})."
            )
        if classes == 2:
            lse = ops.sum(logits * (1.0 - target), axis=-1)
        else:
            sharpness = math.log(classes - 1) / (self.penalty * margin / 2.0)
            negatives = ops.where(target > 0, ops.min(logits, axis=-1, keepdims=True), logits) * sharpness
            shift = ops.max(negatives, axis=-1, keepdims=True)
            exp = ops.exp(negatives - shift) * (1.0 - target)
            lse = (ops.log(ops.sum(exp, axis=-1)) + ops.squeeze(shift, -1)) / sharpness
        hinge = ops.relu(margin / 2.0 - positive) + ops.relu(margin / 2.0 + lse)
        alpha = self._param("alpha", y_pred.dtype)
        return (1.0 - alpha) * (lse - positive) + alpha * hinge

    def get_config(self) -> dict:
        return {**super().get_config(), "temperature": self.temperature, "penalty": self.penalty}
