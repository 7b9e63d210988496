"""Parametrizations: pure functions from raw tensors to constrained kernels, every constraint of the library.

Modelled on PyTorch's split between the generic machinery
(`torch.nn.utils.parametrize`) and the concrete constraints
(`torch.nn.utils.parametrizations`):

* `iteration`: the generic machinery: `l2_normalize`, `iterate` (fixed or
  tolerance loops), `power_iterate` (any linear operator, batched or not),
  `operator_power_iteration`, `bjorck` (batched), deel-lip's defaults.
* `orthogonal`: matrices: spectral normalization, RKO, Björck stacks (BCOP's
  orthonormalization), Frobenius, CHORD.
* `convolution`: conv kernels: conv spectral normalization, OSSN, LiResNet
  blocks, BCOP kernel assembly, AOC composition, SVCM's projection.
* `rescaling`: AOL, SLL and CPL factors.
* `norm_bounds`: provable upper bounds of spectral norms (Gram iteration, dense and conv) that CPL and
  LiResNet blocks divide by.
* `overlap`: the 1 / sqrt(max overlap) correction of RKO convolutions.
* `padding`: circular and mode padding (the operators' building blocks).

Everything is `keras.ops` (TensorFlow, JAX, PyTorch) and stateless: a layer
(`deel_lip_ext.layers`) owns the raw variables and the persistent vectors,
passes them in and stores what comes out (only in training). Orthogonalization
runs in float32, even under mixed precision. `deel_lip_ext.normalizers`
re-exports deel-lip's names of these functions.
"""

from deel_lip_ext.parametrizations.iteration import (
    DEFAULT_BETA_BJORCK,
    DEFAULT_EPS_BJORCK,
    DEFAULT_EPS_SPECTRAL,
    DEFAULT_MAXITER_BJORCK,
    DEFAULT_MAXITER_SPECTRAL,
    bjorck,
    check_normalizer_args,
    frobenius_distance,
    gram_side_bjorck_factors,
    iterate,
    l2_normalize,
    on_gram_side,
    operator_power_iteration,
    power_iterate,
)
from deel_lip_ext.parametrizations.orthogonal import (
    BCOP_BJORCK_ITERATIONS,
    BCOP_POWER_ITERATIONS,
    batched_bjorck,
    batched_power_iteration,
    bjorck_normalization,
    check_chord_eps,
    chord_orthogonalization,
    frobenius_normalization,
    orthonormalize_stack,
    power_iteration,
    reshaped_kernel_orthogonalization,
    spectral_normalization,
)
from deel_lip_ext.parametrizations.convolution import (
    adjoint_conv_kernel,
    aoc_kernel,
    bcop_kernel,
    clip_and_mask,
    compose_conv_kernels,
    conv_with_padding,
    ossn_normalization,
    ossn_spectral_norm,
    pad_then_conv,
    padded_conv_operator,
    residual_block_normalization,
    residual_conv_kernel,
    rko_strided_kernel,
    spectral_normalization_conv,
)
from deel_lip_ext.parametrizations.norm_bounds import (
    GRAM_ITERATIONS,
    conv_norm_bound,
    dense_norm_bound,
    gram_norm_bound,
    max_gram_norm_bound,
    upper_bounded_estimate,
)
from deel_lip_ext.parametrizations.rescaling import (
    aol_rescaling,
    cpl_scale,
    gram_row_sums,
    hidden_major_kernel,
    kernel_self_correlation,
    sll_scale,
)
from deel_lip_ext.parametrizations.overlap import (
    ZERO_PADDINGS,
    axis_overlap_counts,
    conv_lipschitz_coefficient,
    max_overlap,
    overlap_counts,
    pad_widths,
)
from deel_lip_ext.parametrizations.padding import PAD_MODES, circular_pad, mode_pad
