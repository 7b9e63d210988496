"""`SpectralConvBase`: the RKO parametrization of `PadConv2D`, `SpectralConv2DTranspose` and `SpectralConv1D`.

Every one of them orthonormalizes its reshaped kernel matrix M (RKO: power
iteration + Björck), so ||M||_2 <= 1, and multiplies it by k / sqrt(max
overlap), where the overlap of an input entry is the number of (output
window, kernel tap) pairs that read it, padding copies included
(`deel_lip_ext.parametrizations.overlap`). Zero padding ("same", "valid",
"constant") reads each entry at most ceil(k/s) times per axis whatever the
input size, a size-independent bound. Reflect, symmetric and circular padding
copy border entries, so their count depends on the size: the layer pins its
spatial size at build and refuses inputs of another size. (deel-lip's factor
for these paddings is the zero-padding one, which their copies can exceed.)
"""

from __future__ import annotations

import math

import numpy as np
from keras import ops

from deel_lip_ext.layers.base import SpectralMixin
from deel_lip_ext.layers.conv_base import LipschitzConv
from deel_lip_ext.parametrizations.overlap import ZERO_PADDINGS, max_overlap
from deel_lip_ext.spectrum import MAX_DENSE_OPERATOR_SIZE

__all__ = ["SpectralConvBase"]


class SpectralConvBase(SpectralMixin, LipschitzConv):
    """RKO kernel times k / sqrt(max overlap), a size-free factor for zero paddings; bounds from unit impulses.

    Subclasses only declare their geometry (`rank`, `paddings`, `transposed`)
    and signature.
    """

    def overlap_correction(self, input_shape: tuple) -> float:
        return 1.0 / math.sqrt(max_overlap(input_shape[1:-1], self.kernel_size, self.strides, self.padding))

    def pinned_spatial_size(self) -> tuple:
        if self.padding in ZERO_PADDINGS:
            return (None,) * self.rank
        return self.input_spatial_size

    def build_parametrization_state(self):
        self._build_power_iteration_vector(self.kernel_shape()[-1])

    def kernel_dependencies(self):
        return [self.kernel, self.u]

    def compute_kernel(self):
        return self._spectral_kernel(self.lipschitz_coefficient * self.k_coef_lip)

    def operator_matrix(self, input_shape: tuple) -> np.ndarray | None:
        """Dense matrix (inputs, outputs) of the bias-free map at `input_shape` from unit impulses.

        Args:
            input_shape: Keras input shape with the batch dimension.

        Returns:
            A float64 array, or None when a dimension is unknown or the input
            has more than `MAX_DENSE_OPERATOR_SIZE` entries.
        """
        entries = tuple(input_shape[1:])
        if any(dim is None for dim in entries) or int(np.prod(entries)) > MAX_DENSE_OPERATOR_SIZE:
            return None
        size = int(np.prod(entries))
        impulses = ops.convert_to_tensor(np.eye(size, dtype="float32").reshape((size, *entries)))
        outputs = ops.convert_to_numpy(self.conv_geometry().apply(impulses, self.effective_kernel()))
        return outputs.reshape(size, -1).astype(np.float64)

    def operator_norm(self, input_shape: tuple | None = None) -> float:
        """L2 operator norm of the bias-free map at `input_shape` (batch first): exact or a proven upper bound.

        Exact (largest singular value of the map's dense matrix, built from
        unit impulses) when the input has at most `MAX_DENSE_OPERATOR_SIZE`
        entries; otherwise ||M||_2 * sqrt(max overlap), M the reshaped
        effective kernel.
        """
        input_shape = self._checked_shape(input_shape)
        matrix = self.operator_matrix(input_shape)
        if matrix is not None:
            return float(np.linalg.norm(matrix, 2))
        kernel = ops.convert_to_numpy(self.effective_kernel()).astype(np.float64)
        overlap = max_overlap(input_shape[1:-1], self.kernel_size, self.strides, self.padding)
        return float(np.linalg.norm(kernel.reshape(-1, kernel.shape[-1]), 2) * math.sqrt(overlap))

    def singular_value_range(self, input_shape: tuple | None = None) -> tuple[float, float]:
        """(0, `operator_norm`): the largest singular value, no lower bound."""
        return 0.0, self.operator_norm(input_shape)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(self._spectral_config())
        return config
