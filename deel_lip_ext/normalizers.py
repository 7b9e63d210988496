"""deel-lip's `normalizers` module: its function names, defined in `deel_lip_ext.parametrizations`.

A deel-lip user who imports `deel.lip.normalizers` changes only the import.
Every constraint of the library, with the ones deel-lip does not have (BCOP,
AOC, AOL, SLL, CPL, OSSN, LiResNet, CHORD), lives in
`deel_lip_ext.parametrizations`; this module re-exports the names deel-lip
users know and the few others that earlier releases defined here.
"""

from deel_lip_ext.parametrizations import (
    DEFAULT_BETA_BJORCK,
    DEFAULT_EPS_BJORCK,
    DEFAULT_EPS_SPECTRAL,
    DEFAULT_MAXITER_BJORCK,
    DEFAULT_MAXITER_SPECTRAL,
    adjoint_conv_kernel,
    aol_rescaling,
    bjorck_normalization,
    check_normalizer_args,
    chord_orthogonalization,
    compose_conv_kernels,
    frobenius_normalization,
    gram_row_sums,
    hidden_major_kernel,
    kernel_self_correlation,
    operator_power_iteration,
    power_iteration,
    reshaped_kernel_orthogonalization,
    residual_conv_kernel,
    rko_strided_kernel,
    sll_scale,
    spectral_normalization,
    spectral_normalization_conv,
)

__all__ = [
    "DEFAULT_EPS_SPECTRAL",
    "DEFAULT_MAXITER_SPECTRAL",
    "DEFAULT_EPS_BJORCK",
    "DEFAULT_MAXITER_BJORCK",
    "DEFAULT_BETA_BJORCK",
    "check_normalizer_args",
    "power_iteration",
    "spectral_normalization",
    "bjorck_normalization",
    "reshaped_kernel_orthogonalization",
    "frobenius_normalization",
    "spectral_normalization_conv",
    "residual_conv_kernel",
    "adjoint_conv_kernel",
    "operator_power_iteration",
    "chord_orthogonalization",
    "kernel_self_correlation",
    "gram_row_sums",
    "aol_rescaling",
    "hidden_major_kernel",
    "sll_scale",
    "rko_strided_kernel",
    "compose_conv_kernels",
]
