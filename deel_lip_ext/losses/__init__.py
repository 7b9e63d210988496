"""Losses for Lipschitz networks (deel-lip's names and semantics), in `keras.ops`.

Every loss is importable as `deel_lip_ext.losses.<Name>`; they are defined by family:

* `deel_lip_ext.losses.base`: label shape checks, per-sample terms, schedulable parameters;
* `deel_lip_ext.losses.kr`: KR, HKR, HingeMargin, their multi-class versions, MultiMargin, CategoricalHinge;
* `deel_lip_ext.losses.cross_entropy`: the tempered cross-entropies (Tau...);
* `deel_lip_ext.losses.soft`: MulticlassSoftHKR, SoftHKR, LseHKR;
* `deel_lip_ext.losses.margin`: EMMA, LogitAnnealing;
* `deel_lip_ext.losses.linf`: the l_inf-dist losses;
* `deel_lip_ext.losses.state`: the loss's variables as state of JAX's train step (`carry_loss_state`).

Label conventions: binary / multi-label losses (`KR`, `HKR`, `HingeMargin`,
`TauBinaryCrossentropy`) take y in {0, 1} or {-1, 1}; multi-class losses take
one-hot y in {0, 1} or {-1, 1} (the positive entry marks the class);
`TauSparseCategoricalCrossentropy` takes integer class indices. KR counts a
sample as positive iff y == 1 (deel-lip), every other loss iff y > 0.
Shapes are checked when the loss is traced: binary labels (N,) against one
output (N, 1) are reshaped to (N, 1), integer labels given to a one-hot loss
are refused with the fix (one-hot encode them), and nothing is broadcast.

Hyper-parameters (alpha, min_margin, tau) are non-trainable float32
`keras.Variable`s, so that `deel_lip_ext.callbacks.LossParamScheduler` can
change them during `fit`; `get_config` returns their current values as floats.
On the TensorFlow and torch backends the compiled train step reads the new
value; JAX's train step is a pure function of the model's state, so
`carry_loss_state(model)` (called by the callbacks that change loss parameters)
makes the loss's variables part of it: schedules and MulticlassSoftHKR's
running mean then work on every backend.

Deliberate differences from deel-lip, each repeated in the class docstring:

* HKR uses deel-lip's alpha (-KR + alpha * hinge), not torchlip's
  alpha * hinge - (1 - alpha) * KR. alpha = inf means hinge only.
* `CategoricalHinge` takes the max over the *other* logits properly (deel-lip
  master's (1 - y) * f can pick the masked 0 when every logit is negative)
  and defaults to `name="CategoricalHinge"`.
* `MulticlassHinge` has no `soft_hinge_tau` (removed in deel-lip's keras3 branch too).
"""

from deel_lip_ext.losses.base import (
    binary_labels,
    hinge_margin_terms,
    kr_terms,
    multiclass_hinge_terms,
    one_hot_labels,
    process_labels_for_multi_gpu,
    sparse_labels,
)
from deel_lip_ext.losses.cross_entropy import (
    TauBinaryCrossentropy,
    TauCategoricalCrossentropy,
    TauSparseCategoricalCrossentropy,
)
from deel_lip_ext.losses.kr import (
    HKR,
    KR,
    CategoricalHinge,
    HingeMargin,
    MulticlassHinge,
    MulticlassHKR,
    MulticlassKR,
    MultiMargin,
)
from deel_lip_ext.losses.linf import ClippedHingeCrossEntropy, HybridIntervalCrossEntropy, LInfDistHinge
from deel_lip_ext.losses.margin import EMMA, LogitAnnealing, dense_pairwise_lipschitz
from deel_lip_ext.losses.soft import LseHKR, MulticlassSoftHKR, SoftHKR
from deel_lip_ext.losses.state import carry_loss_state

__all__ = [
    "KR",
    "HKR",
    "HingeMargin",
    "MulticlassKR",
    "MulticlassHinge",
    "MulticlassHKR",
    "MulticlassSoftHKR",
    "MultiMargin",
    "CategoricalHinge",
    "TauCategoricalCrossentropy",
    "TauSparseCategoricalCrossentropy",
    "TauBinaryCrossentropy",
    "process_labels_for_multi_gpu",
    "SoftHKR",
    "LseHKR",
    "EMMA",
    "LogitAnnealing",
    "dense_pairwise_lipschitz",
    "LInfDistHinge",
    "ClippedHingeCrossEntropy",
    "HybridIntervalCrossEntropy",
    "carry_loss_state",
]
