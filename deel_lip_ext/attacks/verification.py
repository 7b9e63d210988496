"""`verify_certificates`: attack every certified point and count the certificates an attack breaks.

A certificate is a proof: a certified point that PGD misclassifies is a bug
in the library or a wrong Lipschitz constant. `verify_certificates` runs the
PGD of `deel_lip_ext.attacks.gradient_attacks` with several step sizes and
restarts against the certificates of `deel_lip_ext.certification`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext._certifiable import check_certifiable
from deel_lip_ext._validation import check_int, check_number
from deel_lip_ext.attacks.gradient_attacks import attack_batch, margin_loss_at, prepare_attack
from deel_lip_ext.certification import (
    certified_radius,
    iterate_batches,
    make_progbar,
    radius_conversion,
    resolve_lip_const,
)

__all__ = ["VerificationResult", "verify_certificates"]


@dataclasses.dataclass
class VerificationResult:
    """What `verify_certificates` found at one epsilon.

    Args:
        eps: the attack budget (perturbation radius, >= 0).
        norm: the norm of the attack budget, "l2" or "linf".
        n_samples: points attacked or checked.
        n_correct: correctly classified clean points (positive margin).
        n_certified: points whose certified radius exceeds eps.
        n_broken: certified points the attack misclassified (must be 0).
        broken_indices: their indices in x.
        clean_accuracy: n_correct / n.
        certified_accuracy: n_certified / n.
        empirical_robust_accuracy: fraction of points still correctly
            classified after the attack (an upper bound of the true robust
            accuracy, which the certified accuracy bounds from below).
        lip_const: the Lipschitz bound the certificates used.
    """

    eps: float
    norm: str
    n_samples: int
    n_correct: int
    n_certified: int
    n_broken: int
    broken_indices: np.ndarray
    clean_accuracy: float
    certified_accuracy: float
    empirical_robust_accuracy: float
    lip_const: float

    def __str__(self):
        return (
            f"eps={self.eps:g} ({self.norm}): clean {self.clean_accuracy:.2%}, certified "
            f"{self.certified_accuracy:.2%}, empirical robust {self.empirical_robust_accuracy:.2%}, "
            f"{self.n_broken} of {self.n_certified} certificates broken"
        )


def verify_certificates(
    model: keras.Model,
    x: ArrayLike,
    y: ArrayLike,
    eps: float,
    norm: str = "l2",
    lip_const: float | None = None,
    steps: int = 100,
    restarts: int = 2,
    step_sizes: Sequence[float] | None = None,
    loss: str = "cw",
    clip_min: float = 0.0,
    clip_max: float = 1.0,
    batch_size: int = 256,
    lip_norm: str = "l2",
    disjoint_neurons: bool = False,
    seed: int = 0,
    verbose: bool | str = "auto",
) -> VerificationResult:
    """Attack every correctly classified point at `eps` and count broken certificates.

    The certificates are those of `deel_lip_ext.certification.certified_radius`
    with `lip_const` (None: the computed bound `model_lipschitz_bound(model)`).
    A certified point that the attack misclassifies is a broken certificate:
    a bug in the library or a wrong `lip_const`.

    Args:
        model: Keras classifier returning logits (N, C); C == 1 is binary.
        x: inputs (N, ...).
        y: labels (indices, one-hot, or binary {0,1}/{-1,1}).
        eps: perturbation budget (>= 0).
        norm: "l2" or "linf".
        lip_const: Lipschitz bound; None computes it.
        steps: PGD steps per run.
        restarts: random restarts per step size.
        step_sizes: PGD step lengths to try; None: eps * (0.5, 0.1, 0.025).
        loss: "cw" (margin, default) or "ce".
        clip_min: input box (None: unbounded).
        clip_max: input box (None: unbounded).
        batch_size: attack this many samples at a time.
        lip_norm: "l2" or "linf", the norm `lip_const` holds for (see `certify`).
        disjoint_neurons: only each logit separately is L-Lipschitz.
        seed: seed of the random starts.
        verbose: True, False or "auto" (a progress bar from 4 batches on).

    Returns:
        A `VerificationResult`.

    Examples:
        >>> result = verify_certificates(model, x_test[:500], y_test[:500], eps=1.58)
        >>> assert result.n_broken == 0
    """
    x, target, eps, low, high, batch_size = prepare_attack(model, x, y, eps, norm, loss, clip_min, clip_max, batch_size)
    steps = check_int(steps, "steps")
    restarts = check_int(restarts, "restarts")
    if step_sizes is None:
        step_sizes = tuple(eps * f for f in (0.5, 0.1, 0.025)) if eps > 0 else (1.0,)
    step_sizes = tuple(check_number(s, "step_size", minimum=0, strict=True) for s in np.atleast_1d(step_sizes))
    check_certifiable(model, "verify_certificates")
    lip_const = resolve_lip_const(model, lip_const, lip_norm)
    certificate_norm, factor = radius_conversion(norm, lip_norm, int(np.prod(x.shape[1:])))

    n_batches = math.ceil(len(x) / batch_size)
    progbar = make_progbar(n_batches, verbose)
    correct, certified, robust = [], [], []
    rng = np.random.default_rng(seed)
    for index, (xb, tb) in enumerate(iterate_batches((x, target), batch_size)):
        logits = ops.convert_to_numpy(model(xb, training=False))
        radius = certified_radius(logits, tb, certificate_norm, lip_const, disjoint_neurons) * factor
        _, margin_loss = attack_batch(model, xb, tb, eps, norm, steps, step_sizes, loss, True, restarts, low, high, rng)
        clean_margin = -ops.convert_to_numpy(margin_loss_at(model, xb, tb))
        correct.append(clean_margin > 0)
        certified.append(radius > eps)
        robust.append((ops.convert_to_numpy(margin_loss) < 0) & (clean_margin > 0))
        if progbar is not None:
            progbar.update(index + 1)
    correct, certified, robust = (np.concatenate(v) if v else np.zeros(0, bool) for v in (correct, certified, robust))
    broken = np.flatnonzero(certified & ~robust)
    n = max(len(x), 1)
    return VerificationResult(
        eps=eps,
        norm=norm,
        n_samples=len(x),
        n_correct=int(correct.sum()),
        n_certified=int(certified.sum()),
        n_broken=int(broken.size),
        broken_indices=broken,
        clean_accuracy=float(correct.sum() / n),
        certified_accuracy=float(certified.sum() / n),
        empirical_robust_accuracy=float(robust.sum() / n),
        lip_const=lip_const,
    )
