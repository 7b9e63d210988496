"""Certified-robustness metrics for `model.compile(metrics=[...])`, in `keras.ops`.

They are `keras.metrics.Metric`s (running means over the batches seen, with
sample weights), where deel-lip made them `Loss` subclasses: a Keras 3 metric
accumulates correctly across batches and serializes with the compiled model.
The per-sample radius is `deel_lip_ext.certification.certified_radius`'s
formula: margin / (c L) with c = sqrt(2) (L2, whole logit map L-Lipschitz),
2 (l_inf, or `disjoint_neurons=True`: each logit separately L-Lipschitz) or
1 (single-logit binary model, margin = s f).

Labels: one-hot (N, C) in {0,1} or {-1,1}, or class indices (N,) / (N, 1);
binary models take y in {0,1} or {-1,1}, and their predictions may be (N, 1)
or (N,) (deel-lip accepts both).
"""

from __future__ import annotations

import keras
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext._validation import check_norm, check_number
from deel_lip_ext.certification import certificate_factor, logit_margin, squeezed_labels

__all__ = [
    "CertifiedAccuracy",
    "CategoricalProvableRobustAccuracy",
    "BinaryProvableRobustAccuracy",
    "CategoricalProvableAvgRobustness",
    "BinaryProvableAvgRobustness",
]


class _RadiusMetric(keras.metrics.Mean):
    """Running mean of a function of the per-sample certified radius."""

    def __init__(self, lip_const, norm, disjoint_neurons, name, dtype):
        super().__init__(name=name, dtype=dtype)
        self.lip_const = check_number(lip_const, "lip_const", minimum=0, strict=True)
        self.norm = check_norm(norm)
        self.disjoint_neurons = bool(disjoint_neurons)

    def _signed_radius(self, y_true, y_pred):
        """margin / (c L): positive iff correctly classified (not floored at 0); 0 for an invalid label."""
        y_pred = ops.cast(y_pred, "float32")
        factor = certificate_factor(self.norm, self.disjoint_neurons, y_pred.shape[-1])
        y_true, valid = _checked_label_rows(y_true, y_pred.shape[-1])
        radius = logit_margin(y_true, y_pred) / (factor * self.lip_const)
        return ops.where(valid, radius, ops.zeros_like(radius))

    def _values(self, signed_radius):
        raise NotImplementedError

    def update_state(self, y_true: ArrayLike, y_pred: ArrayLike, sample_weight: ArrayLike | None = None):
        return super().update_state(self._values(self._signed_radius(y_true, y_pred)), sample_weight=sample_weight)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "lip_const": self.lip_const}


def _checked_label_rows(y_true, num_classes):
    """(labels, valid): the rows `certified_radius` would accept (class indices in [0, C), one-hot rows in
    {0, 1} or {-1, 1} with one positive, binary labels in {0, 1} or {-1, 1}); an invalid row (a soft or
    out-of-range label) is replaced by class 0 and flagged, so it counts as not certified instead of raising
    inside a compiled step."""
    y_true = squeezed_labels(ops.cast(y_true, "float32"), num_classes)
    in_sign_set = ops.logical_or(ops.equal(ops.abs(y_true), 1.0), ops.equal(y_true, 0.0))
    if len(y_true.shape) == 2:
        one_positive = ops.equal(ops.sum(ops.cast(y_true > 0, "float32"), axis=-1), 1.0)
        valid = ops.logical_and(ops.all(in_sign_set, axis=-1), one_positive)
        return ops.where(valid[:, None], y_true, ops.one_hot(ops.zeros_like(valid, "int32"), num_classes)), valid
    if num_classes == 1:
        valid = in_sign_set
    else:
        is_index = ops.logical_and(ops.equal(y_true, ops.floor(y_true)), ops.greater_equal(y_true, 0.0))
        valid = ops.logical_and(is_index, ops.less(y_true, float(num_classes)))
    return ops.where(valid, y_true, ops.zeros_like(y_true)), valid


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class CertifiedAccuracy(_RadiusMetric):
    """Fraction of samples whose certified radius exceeds `epsilon` (strictly).

    Labels as in `deel_lip_ext.certification.certified_radius`; a label it
    would refuse (a soft or out-of-range one) cannot raise inside a compiled
    step, so its sample counts as not certified (radius 0), here and in the
    other radius metrics of this module.

    Args:
        epsilon: perturbation budget (>= 0); epsilon = 0 gives the accuracy of
            samples with a strictly positive margin.
        norm: "l2" or "linf" (l_inf: `lip_const` is the l_inf constant, c = 2).
        lip_const: Lipschitz constant L of the network (> 0).
        disjoint_neurons: True when only each logit separately is L-Lipschitz
            (e.g. a last `FrobeniusDense(disjoint_neurons=True)`): c = 2.
        name: as in `keras.metrics.Metric`.
        dtype: as in `keras.metrics.Metric`.

    Examples:
        >>> model.compile(optimizer="adam", loss=MulticlassHKR(),
        ...               metrics=["accuracy", CertifiedAccuracy(36 / 255)])
    """

    def __init__(
        self,
        epsilon: float = 36 / 255,
        norm: str = "l2",
        lip_const: float = 1.0,
        disjoint_neurons: bool = False,
        name: str = "certified_accuracy",
        dtype: str | None = None,
    ) -> None:
        super().__init__(lip_const, norm, disjoint_neurons, name, dtype)
        self.epsilon = check_number(epsilon, "epsilon", minimum=0)

    def _values(self, signed_radius):
        return ops.cast(ops.greater(signed_radius, self.epsilon), "float32")

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "epsilon": self.epsilon,
            "norm": self.norm,
            "disjoint_neurons": self.disjoint_neurons,
        }


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class CategoricalProvableRobustAccuracy(CertifiedAccuracy):
    r"""deel-lip's name for `CertifiedAccuracy`, with deel-lip's defaults.

    $\mathbb{1}[(f_y - \max_{j \ne y} f_j) / c > \epsilon]$, $c = 2 L$ if `disjoint_neurons`
    (the default, as in deel-lip: valid for any L-Lipschitz net, conservative)
    else sqrt(2) L.

    Args:
        epsilon: perturbation budget (>= 0).
        lip_const: Lipschitz constant L (> 0).
        disjoint_neurons: see above.
        name: as in `keras.metrics.Metric`.
        dtype: as in `keras.metrics.Metric`.
        norm: "l2" or "linf" (l_inf: `lip_const` is the l_inf constant, c = 2 L).

    Examples:
        >>> model.compile(optimizer="adam", loss=MulticlassHKR(),
        ...               metrics=[CategoricalProvableRobustAccuracy(epsilon=0.5, disjoint_neurons=False)])
    """

    def __init__(
        self,
        epsilon: float = 36 / 255,
        lip_const: float = 1.0,
        disjoint_neurons: bool = True,
        name: str = "CategoricalProvableRobustAccuracy",
        dtype: str | None = None,
        norm: str = "l2",
    ) -> None:
        super().__init__(
            epsilon=epsilon, norm=norm, lip_const=lip_const, disjoint_neurons=disjoint_neurons, name=name, dtype=dtype
        )


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class BinaryProvableRobustAccuracy(CertifiedAccuracy):
    """Single-logit binary model: fraction of samples with s f / L > epsilon.

    s = +1 for labels > 0, -1 otherwise (labels in {0,1} or {-1,1}).

    Args:
        epsilon: perturbation budget (>= 0).
        lip_const: Lipschitz constant L (> 0).
        name: as in `keras.metrics.Metric`.
        dtype: as in `keras.metrics.Metric`.

    Examples:
        >>> model.compile(optimizer="adam", loss=HKR(alpha=10.0),
        ...               metrics=[BinaryProvableRobustAccuracy(epsilon=0.3)])
    """

    def __init__(
        self,
        epsilon: float = 36 / 255,
        lip_const: float = 1.0,
        name: str = "BinaryProvableRobustAccuracy",
        dtype: str | None = None,
    ) -> None:
        super().__init__(epsilon=epsilon, lip_const=lip_const, name=name, dtype=dtype)

    def update_state(self, y_true: ArrayLike, y_pred: ArrayLike, sample_weight: ArrayLike | None = None):
        y_true, y_pred = _single_logit(self, y_true, y_pred)
        return super().update_state(y_true, y_pred, sample_weight)

    def get_config(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "lip_const": self.lip_const, "epsilon": self.epsilon}


def _single_logit(metric, y_true, y_pred):
    """(y_true, y_pred) as (N, 1) columns: a single-logit model may output (N, 1) or (N,) (deel-lip)."""
    y_pred = ops.convert_to_tensor(y_pred)
    if len(y_pred.shape) == 1:
        y_pred = ops.expand_dims(y_pred, -1)
    if len(y_pred.shape) != 2 or y_pred.shape[-1] != 1:
        raise ValueError(
            f"{type(metric).__name__} needs a single-logit model (output shape (N, 1) or (N,)), "
            f"got output shape {tuple(y_pred.shape)}."
        )
    return ops.reshape(ops.convert_to_tensor(y_true), (-1, 1)), y_pred


def _check_multi_logit(metric, y_pred):
    if y_pred.shape[-1] == 1:
        raise ValueError(
            f"{type(metric).__name__} needs a multi-class model (output shape (N, C), C > 1); "
            "use the Binary variant for a single logit."
        )


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class CategoricalProvableAvgRobustness(_RadiusMetric):
    r"""Mean certified radius $\varphi(f_y - \max_{j \ne y} f_j) / c$ (deel-lip).

    c = 2 L if `disjoint_neurons` (default, as in deel-lip) else sqrt(2) L.
    phi = relu (misclassified samples count 0), or the identity when
    `negative_robustness=True` (misclassified samples count negative).

    Args:
        lip_const: Lipschitz constant L (> 0).
        disjoint_neurons: see above.
        negative_robustness: see above.
        name: as in `keras.metrics.Metric`.
        dtype: as in `keras.metrics.Metric`.

    Examples:
        >>> model.compile(optimizer="adam", loss=MulticlassHKR(),
        ...               metrics=[CategoricalProvableAvgRobustness(disjoint_neurons=False)])
    """

    def __init__(
        self,
        lip_const: float = 1.0,
        disjoint_neurons: bool = True,
        negative_robustness: bool = False,
        name: str = "CategoricalProvableAvgRobustness",
        dtype: str | None = None,
    ) -> None:
        super().__init__(lip_const, "l2", disjoint_neurons, name, dtype)
        self.negative_robustness = bool(negative_robustness)

    def update_state(self, y_true: ArrayLike, y_pred: ArrayLike, sample_weight: ArrayLike | None = None):
        _check_multi_logit(self, y_pred)
        return super().update_state(y_true, y_pred, sample_weight)

    def _values(self, signed_radius):
        return signed_radius if self.negative_robustness else ops.relu(signed_radius)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "disjoint_neurons": self.disjoint_neurons,
            "negative_robustness": self.negative_robustness,
        }


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class BinaryProvableAvgRobustness(_RadiusMetric):
    """Single-logit binary model: mean of phi(s f) / L (phi = relu, or identity).

    Args:
        lip_const: Lipschitz constant L (> 0).
        negative_robustness: misclassified samples count negative instead of 0.
        name: as in `keras.metrics.Metric`.
        dtype: as in `keras.metrics.Metric`.

    Examples:
        >>> model.compile(optimizer="adam", loss=HKR(alpha=10.0), metrics=[BinaryProvableAvgRobustness()])
    """

    def __init__(
        self,
        lip_const: float = 1.0,
        negative_robustness: bool = False,
        name: str = "BinaryProvableAvgRobustness",
        dtype: str | None = None,
    ) -> None:
        super().__init__(lip_const, "l2", False, name, dtype)
        self.negative_robustness = bool(negative_robustness)

    def update_state(self, y_true: ArrayLike, y_pred: ArrayLike, sample_weight: ArrayLike | None = None):
        y_true, y_pred = _single_logit(self, y_true, y_pred)
        return super().update_state(y_true, y_pred, sample_weight)

    _values = CategoricalProvableAvgRobustness._values

    def get_config(self) -> dict:
        return {**super().get_config(), "negative_robustness": self.negative_robustness}
