"""Lipschitz-regularized and adversarial training of ordinary Keras models ("tulip").

Finlay, Calder, Abbasi & Oberman show that adversarial training is, to first order, a
penalty on the input gradient of the loss, and that adding a Lipschitz term (the batch
max of input-gradient norms) makes models markedly more robust. This module trains *any*
Keras model with these objectives through `model.fit`, by wrapping it in
`RobustTrainingModel`:

| paper name   | objective class         | training loss                                                      |
|--------------|-------------------------|--------------------------------------------------------------------|
| J0           | `PlainTraining`         | E[l(x)]                                                            |
| J1           | `FGSMTraining`          | E[l(x')], x' = x + eps sign(g)/sqrt(D), first order l + eps/sqrt(D) ‖g‖₁ |
| J2           | `L2AdversarialTraining` | E[l(x')], x' = x + eps g/‖g‖₂, first order l + eps ‖g‖₂               |
| J2-Lip       | `Tulip`                 | J2 + lip_weight max over the batch of ‖∇ₓl(x')‖₂ (double backprop)  |
| 2019 variant | `GradientNormPenalty`   | E[l(x)] + lip_weight/2 E[((l(x + h v) - l(x))/h)²]                  |
|              | `PGDTraining`           | E[l(x_pgd)], Madry's projected gradient attack (l2 or linf)         |

with g = grad_x l(x) computed in inference mode and detached. Measurement helpers give the
columns of the paper's table: `adversarial_distances` / `median_adversarial_distance`,
`error_at_eps` and `lipschitz_estimate` (an empirical *estimate* of the Lipschitz constant
over data points, a lower bound, not a certificate).

The package is split by concept: `gradients` (per-sample losses, input gradients,
penalties), `objectives` (J0 ... PGD-AT), `training` (`RobustTrainingModel`) and
`measurement`; the PGD it uses is `deel_lip_ext.attacks.pgd_perturbation`. Input
gradients need backend autodiff; that code lives in `deel_lip_ext._autodiff`
(TensorFlow, JAX and torch).
"""

from deel_lip_ext.attacks.gradient_attacks import pgd_perturbation
from deel_lip_ext.attacks.steps import sample_norms
from deel_lip_ext.regularization.gradients import (
    FINITE_DIFFERENCE_ORDERS,
    NORMS,
    PENALTY_SCALINGS,
    cross_entropy_loss,
    finite_difference_gradient_norms,
    lipschitz_penalty,
    loss_input_gradient,
    margin_loss,
    per_sample_loss,
)
from deel_lip_ext.regularization.measurement import (
    ATTACK_LOSSES,
    adversarial_distances,
    error_at_eps,
    error_curve,
    lipschitz_estimate,
    median_adversarial_distance,
)
from deel_lip_ext.regularization.objectives import (
    FGSMTraining,
    GradientNormPenalty,
    L2AdversarialTraining,
    PGDTraining,
    PlainTraining,
    Tulip,
    get_objective,
)
from deel_lip_ext.regularization.training import RobustTrainingModel

__all__ = [
    "NORMS",
    "PENALTY_SCALINGS",
    "FINITE_DIFFERENCE_ORDERS",
    "ATTACK_LOSSES",
    "sample_norms",
    "per_sample_loss",
    "cross_entropy_loss",
    "margin_loss",
    "loss_input_gradient",
    "lipschitz_penalty",
    "finite_difference_gradient_norms",
    "pgd_perturbation",
    "PlainTraining",
    "FGSMTraining",
    "L2AdversarialTraining",
    "Tulip",
    "GradientNormPenalty",
    "PGDTraining",
    "get_objective",
    "RobustTrainingModel",
    "adversarial_distances",
    "median_adversarial_distance",
    "error_at_eps",
    "error_curve",
    "lipschitz_estimate",
]
