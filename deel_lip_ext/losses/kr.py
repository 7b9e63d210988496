"""The KR and hinge family (deel-lip's names): KR, HKR, HingeMargin and their multi-class versions, margins."""

from __future__ import annotations


import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext.losses.base import (
    _hkr,
    _ParametrizedLoss,
    _check_nonnegative,
    _target_mask,
    binary_labels,
    hinge_margin_terms,
    kr_terms,
    multiclass_hinge_terms,
    one_hot_labels,
)

__all__ = [
    "KR",
    "MulticlassKR",
    "HingeMargin",
    "HKR",
    "MulticlassHinge",
    "MulticlassHKR",
    "MultiMargin",
    "CategoricalHinge",
]

# ---------------------------------------------------------------- KR family


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class KR(keras.losses.Loss):
    r"""Kantorovich-Rubinstein estimate of W1 between positives (y == 1) and the rest.

    Per output column c: $\mathrm{mean}_{y_c = 1} f_c - \mathrm{mean}_{y_c \ne 1} f_c$, averaged
    over columns. It is positive when the model separates the classes: it is an
    estimate to *maximize* (use it as a metric, or minimize `HKR(alpha=0)`).
    Batch-global: with `reduction="none"` the per-sample terms are B f (1[P]/|P|
    - 1[N]/|N|), whose mean is the estimate.

    Args:
        multi_gpu: labels were preprocessed by `process_labels_for_multi_gpu`
            (use `reduction="sum"` over replicas).
        reduction: as in `keras.losses.Loss`.
        name: as in `keras.losses.Loss`.
        dtype: as in `keras.losses.Loss`.

    Examples:
        >>> model.compile(optimizer="adam", loss=HKR(alpha=0.0), metrics=[KR()])
    """

    _labels = staticmethod(binary_labels)

    def __init__(
        self,
        multi_gpu: bool = False,
        reduction: str = "sum_over_batch_size",
        name: str = "KR",
        dtype: str | None = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.multi_gpu = bool(multi_gpu)

    def call(self, y_true: ArrayLike, y_pred: ArrayLike):
        return kr_terms(self._labels(y_true, y_pred, self.name), y_pred, self.multi_gpu)

    def get_config(self) -> dict:
        return {**super().get_config(), "multi_gpu": self.multi_gpu}


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class MulticlassKR(KR):
    """KR on one-hot labels: the per-class KR estimates, averaged over classes.

    The same computation as `KR` (deel-lip); y is one-hot in {0,1} or {-1,1}.

    Args:
        multi_gpu: as in `KR`.
        reduction: as in `keras.losses.Loss`.
        name: as in `keras.losses.Loss`.
        dtype: as in `keras.losses.Loss`.

    Examples:
        >>> model.compile(optimizer="adam", loss=MulticlassHKR(), metrics=[MulticlassKR()])
    """

    _labels = staticmethod(one_hot_labels)

    def __init__(
        self,
        multi_gpu: bool = False,
        reduction: str = "sum_over_batch_size",
        name: str = "MulticlassKR",
        dtype: str | None = None,
    ) -> None:
        super().__init__(multi_gpu=multi_gpu, reduction=reduction, name=name, dtype=dtype)


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class HingeMargin(_ParametrizedLoss):
    """Hinge loss with the margin split on both sides: mean_c relu(m/2 - s_c f_c).

    s_c = +1 if y_c > 0 else -1, so labels may be {0,1} or {-1,1}.

    Args:
        min_margin: the margin m (>= 0); a variable, schedulable.
        reduction: as in `keras.losses.Loss`.
        name: as in `keras.losses.Loss`.
        dtype: as in `keras.losses.Loss`.

    Examples:
        >>> model.compile(optimizer="adam", loss=HingeMargin(min_margin=1.0))
    """

    _labels = staticmethod(binary_labels)

    _params = ("min_margin",)

    def __init__(
        self,
        min_margin: float = 1.0,
        reduction: str = "sum_over_batch_size",
        name: str = "HingeMargin",
        dtype: str | None = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self._set_params(min_margin=_check_nonnegative("min_margin", min_margin))

    def call(self, y_true: ArrayLike, y_pred: ArrayLike):
        y_true = self._labels(y_true, y_pred, self.name)
        return hinge_margin_terms(y_true, y_pred, self._param("min_margin", y_pred.dtype))


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class HKR(_ParametrizedLoss):
    """Hinge-regularized KR loss: -KR + alpha * HingeMargin(min_margin) (deel-lip's alpha).

    Not torchlip's alpha * hinge - (1 - alpha) * KR: alpha is any number >= 0,
    alpha = 0 gives -KR and alpha = inf gives the hinge alone.

    Args:
        alpha: weight of the hinge term (>= 0, inf allowed); schedulable.
        min_margin: hinge margin m; schedulable.
        multi_gpu: labels preprocessed by `process_labels_for_multi_gpu`.
        reduction: as in `keras.losses.Loss`.
        name: as in `keras.losses.Loss`.
        dtype: as in `keras.losses.Loss`.

    Examples:
        >>> model.compile(optimizer="adam", loss=HKR(alpha=10.0, min_margin=1.0), metrics=[KR()])
    """

    _labels = staticmethod(binary_labels)

    _params = ("alpha", "min_margin")

    def __init__(
        self,
        alpha: float,
        min_margin: float = 1.0,
        multi_gpu: bool = False,
        reduction: str = "sum_over_batch_size",
        name: str = "HKR",
        dtype: str | None = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.multi_gpu = bool(multi_gpu)
        self._set_params(
            alpha=_check_nonnegative("alpha", alpha), min_margin=_check_nonnegative("min_margin", min_margin)
        )

    def _hinge(self, y_true, y_pred):
        return hinge_margin_terms(y_true, y_pred, self._param("min_margin", y_pred.dtype))

    def call(self, y_true: ArrayLike, y_pred: ArrayLike):
        y_true = self._labels(y_true, y_pred, self.name)
        kr = kr_terms(y_true, y_pred, self.multi_gpu)
        return _hkr(kr, self._hinge(y_true, y_pred), self.alpha)

    def get_config(self) -> dict:
        return {**super().get_config(), "multi_gpu": self.multi_gpu}


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class MulticlassHinge(_ParametrizedLoss):
    r"""One-vs-all hinge: $\frac{1}{C} \sum_{j \ne y} [\mathrm{relu}(m/2 - f_y) + \mathrm{relu}(m/2 + f_j)]$.

    The true-class term is counted C - 1 times, and the sum is divided by C
    (deel-lip). y is one-hot in {0,1} or {-1,1}; a row with no positive entry,
    or several, takes deel-lip's elementwise form (`multiclass_hinge_terms`):
    relu(m/2 - f_c) weighted C - 1 for each positive c, relu(m/2 + f_c) for each other.

    Args:
        min_margin: the margin m (>= 0); schedulable.
        reduction: as in `keras.losses.Loss`.
        name: as in `keras.losses.Loss`.
        dtype: as in `keras.losses.Loss`.

    Examples:
        >>> model.compile(optimizer="adam", loss=MulticlassHinge(min_margin=1.0))
    """

    _labels = staticmethod(one_hot_labels)

    _params = ("min_margin",)

    def __init__(
        self,
        min_margin: float = 1.0,
        reduction: str = "sum_over_batch_size",
        name: str = "MulticlassHinge",
        dtype: str | None = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self._set_params(min_margin=_check_nonnegative("min_margin", min_margin))

    def call(self, y_true: ArrayLike, y_pred: ArrayLike):
        y_true = self._labels(y_true, y_pred, self.name)
        return multiclass_hinge_terms(y_true, y_pred, self._param("min_margin", y_pred.dtype))


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class MulticlassHKR(HKR):
    """-MulticlassKR + alpha * MulticlassHinge(min_margin) (deel-lip's alpha; inf: hinge only).

    Args:
        alpha: weight of the hinge term (>= 0, inf allowed); schedulable.
        min_margin: hinge margin m; schedulable.
        multi_gpu: labels preprocessed by `process_labels_for_multi_gpu`.
        reduction: as in `keras.losses.Loss`.
        name: as in `keras.losses.Loss`.
        dtype: as in `keras.losses.Loss`.

    Examples:
        >>> model.compile(optimizer="adam", loss=MulticlassHKR(alpha=10.0, min_margin=1.0))
    """

    _labels = staticmethod(one_hot_labels)

    def __init__(
        self,
        alpha: float = 10.0,
        min_margin: float = 1.0,
        multi_gpu: bool = False,
        reduction: str = "sum_over_batch_size",
        name: str = "MulticlassHKR",
        dtype: str | None = None,
    ) -> None:
        super().__init__(
            alpha=alpha, min_margin=min_margin, multi_gpu=multi_gpu, reduction=reduction, name=name, dtype=dtype
        )

    def _hinge(self, y_true, y_pred):
        return multiclass_hinge_terms(y_true, y_pred, self._param("min_margin", y_pred.dtype))


# ---------------------------------------------------------------- margin losses


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class MultiMargin(_ParametrizedLoss):
    r"""Multi-class hinge of the BCOP paper (torch `multi_margin_loss`, p = 1).

    Per sample: $\frac{1}{C} \sum_{j \ne y} \mathrm{relu}(m - f_y + f_j)$. The sum over the wrong
    classes is divided by C, not C - 1, as in torch, LConvNet and deel-lip. For
    an L-Lipschitz (L2) network trained to certify eps_train, use
    $m = \sqrt{2} \, \epsilon_{\mathrm{train}} L$.

    Args:
        min_margin: the margin m (>= 0); schedulable.
        reduction: as in `keras.losses.Loss`.
        name: as in `keras.losses.Loss`.
        dtype: as in `keras.losses.Loss`.

    Examples:
        >>> model.compile(optimizer="adam", loss=MultiMargin(min_margin=math.sqrt(2) * 1.5))
    """

    _labels = staticmethod(one_hot_labels)

    _params = ("min_margin",)

    def __init__(
        self,
        min_margin: float = 1.0,
        reduction: str = "sum_over_batch_size",
        name: str = "MultiMargin",
        dtype: str | None = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self._set_params(min_margin=_check_nonnegative("min_margin", min_margin))

    def call(self, y_true: ArrayLike, y_pred: ArrayLike):
        target = _target_mask(self._labels(y_true, y_pred, self.name), y_pred)
        target_logit = ops.sum(y_pred * target, axis=-1, keepdims=True)
        margin = self._param("min_margin", y_pred.dtype)
        return ops.mean((1 - target) * ops.relu(margin - target_logit + y_pred), axis=-1)


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class CategoricalHinge(_ParametrizedLoss):
    r"""$\mathrm{relu}(m - (f_y - \max_{j \ne y} f_j))$: hinge on the logit margin.

    Unlike deel-lip master, the max is over the other logits only (their
    (1 - y) * f can return the masked 0 when every other logit is negative).

    Args:
        min_margin: the margin m (>= 0, required as in deel-lip); schedulable.
        reduction: as in `keras.losses.Loss`.
        name: as in `keras.losses.Loss`.
        dtype: as in `keras.losses.Loss`.

    Examples:
        >>> model.compile(optimizer="adam", loss=CategoricalHinge(min_margin=0.5))
    """

    _labels = staticmethod(one_hot_labels)

    _params = ("min_margin",)

    def __init__(
        self,
        min_margin: float,
        reduction: str = "sum_over_batch_size",
        name: str = "CategoricalHinge",
        dtype: str | None = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self._set_params(min_margin=_check_nonnegative("min_margin", min_margin))

    def call(self, y_true: ArrayLike, y_pred: ArrayLike):
        y_true = self._labels(y_true, y_pred, self.name)
        is_target = ops.greater(ops.cast(y_true, y_pred.dtype), 0)
        target_logit = ops.sum(ops.where(is_target, y_pred, ops.zeros_like(y_pred)), axis=-1)
        best_other = ops.max(ops.where(is_target, ops.full_like(y_pred, -np.inf), y_pred), axis=-1)
        return ops.relu(self._param("min_margin", y_pred.dtype) - (target_logit - best_other))
