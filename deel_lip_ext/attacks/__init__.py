"""Gradient attacks (FGSM, PGD) and an empirical check of certificates (TensorFlow, JAX, PyTorch).

* `deel_lip_ext.attacks.steps`: the projected-gradient step (`pgd_step`) and its
  primitives, in `keras.ops`.
* `deel_lip_ext.attacks.gradient_attacks`: `fgsm` and `pgd` (numpy in, numpy
  out) and `pgd_perturbation` (in-graph, for adversarial training in
  `deel_lip_ext.regularization`).
* `deel_lip_ext.attacks.verification`: `verify_certificates`, which tries to
  break every certified point.
"""

from deel_lip_ext.attacks.gradient_attacks import LOSSES, fgsm, pgd, pgd_perturbation
from deel_lip_ext.attacks.steps import (
    ascent_direction,
    clip_to_box,
    pgd_step,
    project_to_ball,
    random_ball_start,
    sample_norms,
)
from deel_lip_ext.attacks.verification import VerificationResult, verify_certificates

__all__ = [
    "fgsm",
    "pgd",
    "pgd_perturbation",
    "verify_certificates",
    "VerificationResult",
    "LOSSES",
    "pgd_step",
    "ascent_direction",
    "project_to_ball",
    "clip_to_box",
    "random_ball_start",
    "sample_norms",
]
