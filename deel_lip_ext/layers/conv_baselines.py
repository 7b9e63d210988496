"""The convolutions the BCOP paper compares with (its Table 1 ablation), in the same wrapper as BCOP.

All three use `DownsamplingConv2DBase`: a stride is an invertible
downsampling followed by a stride-1 convolution, circular padding by default.

* `OSSNConv2D`: one-sided spectral normalization (Gouk et al.). Power
  iteration on the true convolution operator at the real input size with a
  persistent vector (10 iterations per training step); the kernel is
  divided by max(sigma, 1).
* `RKOConv2D`: reshaped kernel orthogonalization. Björck (BCOP code settings)
  on the (kh * kw * c_in, c_out) matrix, times 1 / sqrt(max overlap), the
  exact factor for the padding (1/k for a circular k x k conv).
* `SVCMConv2D` + the `SVCMProjection` callback: singular value clipping and
  masking (Sedghi et al.). The kernel is unconstrained between projections;
  every N steps it is projected (FFT at the real input size, clip, inverse
  FFT, crop to the k x k support, 50 times). Cropping leaves the norm
  slightly above the target: certify with the *measured* norm
  (`deel_lip_ext.utils.model_lipschitz_bound` measures it).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext.layers.bcop import (
    BCOP_BJORCK_ITERATIONS,
    BCOP_POWER_ITERATIONS,
    DownsamplingConv2DBase,
    OrthonormalStackMixin,
    _check_iterations,
)
from deel_lip_ext.layers.padding import circular_pad

__all__ = ["OSSNConv2D", "RKOConv2D", "SVCMConv2D", "SVCMProjection", "clip_and_mask"]


def _pad_then_conv(x, kernel, pads, circular):
    """Stride-1 "valid" convolution after a wrap-around or zero pad of `pads` ((top, bottom), (left, right))."""
    if circular:
        x = circular_pad(x, pads)
    elif any(p for pair in pads for p in pair):
        x = ops.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),))
    return ops.conv(x, kernel, strides=1, padding="valid")


def _adjoint_kernel(kernel):
    """Kernel of the adjoint convolution: spatially flipped, input and output channels swapped."""
    return ops.transpose(ops.flip(ops.flip(kernel, 0), 1), (0, 1, 3, 2))


def _l2_normalize(x, eps=1e-12):
    return x / ops.sqrt(ops.maximum(ops.sum(ops.square(x)), eps))


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class OSSNConv2D(DownsamplingConv2DBase):
    """Convolution with one-sided spectral normalization on its true operator (Gouk et al.).

    A persistent vector shaped like one output sample warm-starts
    `power_iterations` power iterations (no gradient) on the convolution
    operator at the real input size (after downsampling) and its adjoint;
    sigma = u^T A v is then differentiable in the kernel, and the kernel used
    is k * W / max(sigma, 1). Training stores the new vector; inference runs
    the same iterations from the stored vector, so the kernel is never stale.
    Power iteration approaches sigma from below: the exact norm is slightly
    above k until the vector has converged (certify with the measured norm).
    Its cost grows with the image size, unlike BCOP's.

    Args:
        filters: as `BCOPConv2D`.
        kernel_size: as `BCOPConv2D`.
        strides: as `BCOPConv2D`.
        padding: as `BCOPConv2D`.
        k_coef_lip: as `BCOPConv2D`.
        power_iterations: iterations per call (10, as in the BCOP paper).
        **kwargs: other arguments of `keras.layers.Conv2D`.

    Examples:
        >>> conv = OSSNConv2D(16, 3)
        >>> y = conv(keras.random.normal((2, 16, 16, 3)))
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int] = (1, 1),
        padding: str = "circular",
        k_coef_lip: float = 1.0,
        power_iterations: int = BCOP_POWER_ITERATIONS,
        **kwargs: Any,
    ) -> None:
        super().__init__(filters, kernel_size, strides=strides, padding=padding, k_coef_lip=k_coef_lip, **kwargs)
        self.power_iterations = _check_iterations(power_iterations, "power_iterations")

    def build_parametrization_state(self):
        if None in self.conv_input_shape:
            raise ValueError(
                f"OSSNConv2D normalizes the operator at the real input size: it needs known spatial dimensions, "
                f"got {self.input_spatial_size}."
            )
        output_shape = self.compute_output_shape((1,) + self.input_spatial_size + (None,))
        self.u = self.add_weight(
            name="u",
            shape=output_shape,
            initializer=keras.initializers.RandomNormal(0.0, 1.0),
            trainable=False,
            dtype="float32",
            autocast=False,
        )

    def kernel_dependencies(self):
        return [self.kernel, self.u]

    def _operator_and_adjoint(self, kernel):
        # y[p] = sum_a x[p + a - before] K[a], so x[q] = sum_a y[q - a + before] K[a]^T: a correlation with
        # the flipped kernel padded by (k - 1 - before, k - 1 - after), wrap-around or zeros alike.
        pads = self.conv_padding_widths()
        adjoint_pads = tuple((k - 1 - before, k - 1 - after) for k, (before, after) in zip(self.conv_kernel_size, pads))
        circular = self.padding == "circular"
        adjoint = _adjoint_kernel(kernel)

        def forward(v):
            return _pad_then_conv(v, kernel, pads, circular)

        def backward(u):
            return _pad_then_conv(u, adjoint, adjoint_pads, circular)

        return forward, backward

    def spectral_norm_estimate(self, kernel: ArrayLike | None = None):
        """`(sigma, new_u)`: power-iteration estimate of the operator norm (differentiable in the kernel)."""
        kernel = ops.cast(self.kernel if kernel is None else kernel, "float32")
        forward_sg, backward_sg = self._operator_and_adjoint(ops.stop_gradient(kernel))
        u = _l2_normalize(ops.convert_to_tensor(self.u))
        for _ in range(self.power_iterations):
            v = _l2_normalize(backward_sg(u))
            u = _l2_normalize(forward_sg(v))
        u, v = ops.stop_gradient(u), ops.stop_gradient(_l2_normalize(backward_sg(u)))
        forward, _ = self._operator_and_adjoint(kernel)
        return ops.sum(u * forward(v)), u

    def compute_kernel(self, training: bool | None = False):
        kernel = ops.cast(self.kernel, "float32")
        sigma, u = self.spectral_norm_estimate(kernel)
        return kernel * (self.k_coef_lip / ops.maximum(sigma, 1.0)), [(self.u, u)]

    def get_config(self) -> dict:
        config = super().get_config()
        config["power_iterations"] = self.power_iterations
        return config


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class RKOConv2D(OrthonormalStackMixin, DownsamplingConv2DBase):
    """Reshaped kernel orthogonalization with the BCOP code's Björck settings.

    The kernel reshaped to (kh * kw * c_in, c_out) is divided by a
    power-iteration estimate of its norm (no gradient) and orthonormalized by
    20 fixed Björck iterations, then multiplied by k / sqrt(max overlap)
    (1 / sqrt(kh * kw) for a circular stride-1 conv), the exact correction
    for the padding at the real input size. 1-Lipschitz but not orthogonal:
    many singular values of the operator end well below 1.

    Args:
        filters: as `BCOPConv2D`.
        kernel_size: as `BCOPConv2D`.
        strides: as `BCOPConv2D`.
        padding: as `BCOPConv2D`.
        k_coef_lip: as `BCOPConv2D`.
        bjorck_iterations: as `BCOPConv2D` (20 and 10).
        power_iterations: as `BCOPConv2D` (20 and 10).
        **kwargs: other arguments of `keras.layers.Conv2D`.

    Examples:
        >>> conv = RKOConv2D(16, 3)
        >>> y = conv(keras.random.normal((2, 16, 16, 3)))
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int] = (1, 1),
        padding: str = "circular",
        k_coef_lip: float = 1.0,
        bjorck_iterations: int = BCOP_BJORCK_ITERATIONS,
        power_iterations: int = BCOP_POWER_ITERATIONS,
        **kwargs: Any,
    ) -> None:
        super().__init__(filters, kernel_size, strides=strides, padding=padding, k_coef_lip=k_coef_lip, **kwargs)
        self._init_orthonormalization(bjorck_iterations, power_iterations)

    def compute_kernel(self, training: bool | None = False):
        orthonormal, vectors = self.orthonormal_matrices()
        kernel = ops.reshape(orthonormal, self.kernel.shape)
        return kernel * (self.lipschitz_coefficient * self.k_coef_lip), [(self.power_vectors, vectors)]


def clip_and_mask(
    kernel: ArrayLike, input_size: int | tuple[int, int], max_singular_value: float = 1.0, iterations: int = 50
) -> np.ndarray:
    """Sedghi et al.'s projection of a conv kernel: clip the operator's singular values, crop to the support.

    Each iteration takes the kernel's symbol on the n_h x n_w torus (FFT),
    clips every frequency matrix's singular values to `max_singular_value`,
    goes back (inverse FFT, real part) and keeps the kh x kw support. The
    crop undoes part of the clipping: the norm converges to the target from
    above without reaching it.

    Args:
        kernel: array (kh, kw, c_in, c_out).
        input_size: (n_h, n_w), at least the kernel size.
        max_singular_value: clipping level.
        iterations: number of clip-and-crop rounds.

    Returns:
        The projected kernel (numpy float64).

    Examples:
        >>> projected = clip_and_mask(kernel, (16, 16), iterations=50)
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    kh, kw = kernel.shape[:2]
    if kh > input_size[0] or kw > input_size[1]:
        raise ValueError(f"input_size {tuple(input_size)} must be at least the kernel size {(kh, kw)}.")
    for _ in range(iterations):
        symbol = np.fft.fft2(kernel, s=tuple(input_size), axes=(0, 1))
        left, values, right = np.linalg.svd(symbol, full_matrices=False)
        symbol = (left * np.minimum(values, max_singular_value)[..., None, :]) @ right
        kernel = np.real(np.fft.ifft2(symbol, axes=(0, 1)))[:kh, :kw]
    return kernel


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class SVCMConv2D(DownsamplingConv2DBase):
    """Convolution kept near `k_coef_lip`-Lipschitz by singular value clipping and masking (Sedghi et al.).

    The kernel is an ordinary trainable kernel; `project()` (called every N
    training steps by the `SVCMProjection` callback) clips the singular
    values of the operator at the real input size (after downsampling; for
    zero padding, of the enclosing circular operator) and crops back to the
    kernel support, `num_projections` times. Between projections nothing
    constrains the kernel, and right after one the norm is slightly above
    `k_coef_lip` (e.g. 1.003 after 50 rounds): certify with the measured
    norm, `lipschitz_sv()` or `deel_lip_ext.utils.model_lipschitz_bound`.

    Args:
        filters: as `BCOPConv2D`.
        kernel_size: as `BCOPConv2D`.
        strides: as `BCOPConv2D`.
        padding: as `BCOPConv2D`.
        k_coef_lip: clipping level of the projection.
        num_projections: clip-and-crop rounds per projection (50).
        kernel_initializer: "glorot_uniform" (the kernel is unconstrained).
        **kwargs: other arguments of `keras.layers.Conv2D`.

    Examples:
        >>> conv = SVCMConv2D(16, 3)
        >>> model.fit(x, y, callbacks=[SVCMProjection(every_n_steps=100)])
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int] = (1, 1),
        padding: str = "circular",
        k_coef_lip: float = 1.0,
        num_projections: int = 50,
        kernel_initializer: str | keras.initializers.Initializer = "glorot_uniform",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            k_coef_lip=k_coef_lip,
            kernel_initializer=kernel_initializer,
            **kwargs,
        )
        self.num_projections = _check_iterations(num_projections, "num_projections")

    def build_parametrization_state(self):
        if None in self.conv_input_shape:
            raise ValueError(
                f"SVCMConv2D projects the operator at the real input size: it needs known spatial dimensions, "
                f"got {self.input_spatial_size}."
            )
        if any(k > n for k, n in zip(self.conv_kernel_size, self.projection_size())):
            raise ValueError(f"kernel_size {self.kernel_size} is larger than the input {self.input_spatial_size}.")

    def projection_size(self):
        """The torus on which the operator is clipped: the input size, plus k - 1 for zero padding."""
        sizes = self.conv_input_shape[:2]
        if self.padding == "circular":
            return sizes
        return tuple(n + k - 1 for n, k in zip(sizes, self.conv_kernel_size))

    def kernel_dependencies(self):
        return [self.kernel]

    def compute_kernel(self, training: bool | None = False):
        return ops.cast(self.kernel, "float32"), []

    def project(self, num_projections: int | None = None):
        """Clip and mask the kernel now (eagerly, in float64); returns the measured norm afterwards."""
        projected = clip_and_mask(
            ops.convert_to_numpy(self.kernel),
            self.projection_size(),
            max_singular_value=self.k_coef_lip,
            iterations=self.num_projections if num_projections is None else num_projections,
        )
        self.kernel.assign(projected.astype(self.kernel.dtype))
        return self.lipschitz_sv()[1]

    def get_config(self) -> dict:
        config = super().get_config()
        config["num_projections"] = self.num_projections
        return config


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class SVCMProjection(keras.callbacks.Callback):
    """Project every `SVCMConv2D` of the model every N training batches and at the end of each epoch.

    As in the BCOP code: on every batch whose index within the epoch is a
    multiple of `every_n_steps` (after its update) and after the last batch
    of each epoch. The measured norms of the last projection are in
    `self.measured_norms` (layer name -> largest singular value).

    Args:
        every_n_steps: projection period in batches (100 in the BCOP paper).
        on_epoch_end: also project after the last batch of each epoch.

    Examples:
        >>> model.fit(x, y, epochs=10, callbacks=[SVCMProjection(every_n_steps=100)])
    """

    def __init__(self, every_n_steps: int = 100, on_epoch_end: bool = True) -> None:
        super().__init__()
        self.every_n_steps = _check_iterations(every_n_steps, "every_n_steps")
        self.project_on_epoch_end = bool(on_epoch_end)
        self.measured_norms = {}

    def project(self):
        """Project every `SVCMConv2D` of the model now."""
        for layer in self.model._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, SVCMConv2D) and layer.built:
                self.measured_norms[layer.name] = layer.project()

    def on_train_batch_end(self, batch: int, logs: dict | None = None):
        if batch % self.every_n_steps == 0:
            self.project()

    def on_epoch_end(self, epoch: int, logs: dict | None = None):
        if self.project_on_epoch_end:
            self.project()

    def get_config(self) -> dict:
        return {"every_n_steps": self.every_n_steps, "on_epoch_end": self.project_on_epoch_end}
