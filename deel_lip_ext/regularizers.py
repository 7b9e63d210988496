"""Orthogonality regularizers (deel-lip's `deel.lip.regularizers`), in `keras.ops`.

* `Lorth2D` / `LorthRegularizer`: the Lorth penalty of Achour et al. (JMLR
  2022) for a 2-D convolution kernel W (R, R, C, M): the convolution of the
  kernel with itself (each output filter seen as an image, padded by
  P = ((R - 1) // s) s, stride s) must equal the identity at the centre tap
  and zero elsewhere. Value: ||conv(W, W) - I_centre||_F^2 - delta, with
  delta = max(0, M - s^2 C) (max(0, C - s^2 M) with `conv_transpose=True`),
  the part of the distance that no kernel can remove when the convolution
  is an embedding.
* `OrthDenseRegularizer`: lambda ||W W^T - I||_F^2 on the smaller Gram matrix.

A regularizer only pushes towards orthogonality: it proves nothing. For a
certified constant use the constrained layers (or `deel_lip_ext.certification`
on the trained model).

Differences from deel-lip: impossible configurations and even kernels raise
`ValueError` (deel-lip: `RuntimeError` / `AssertionError`), and
`LorthRegularizer` takes its kernel shape from the first kernel it sees when
none was given (deel-lip requires `set_kernel_shape` first).
"""

import numbers
import warnings

import keras
from keras import ops

from deel_lip_ext._validation import check_number

__all__ = ["Lorth2D", "LorthRegularizer", "OrthDenseRegularizer"]


class Lorth2D:
    """Lorth penalty of a 2-D convolution kernel (R, R, C, M), R odd.

    Args:
        kernel_shape: (R, R, C, M), or None to set later with `set_kernel_shape`.
        stride: stride of the convolution.
        conv_transpose: the kernel belongs to a transposed convolution (only
            changes delta, as in deel-lip).

    Examples:
        >>> lorth = Lorth2D(kernel_shape=(3, 3, 8, 16))
        >>> value = lorth.compute_lorth(conv.kernel)
    """

    dim = 2

    def __init__(
        self, kernel_shape: tuple[int, int, int, int] | None = None, stride: int = 1, conv_transpose: bool = False
    ) -> None:
        if isinstance(stride, bool) or not isinstance(stride, numbers.Integral) or stride < 1:
            raise ValueError(f"stride must be an int >= 1, got {stride!r}.")
        self.stride = int(stride)
        self.conv_transpose = bool(conv_transpose)
        self.set_kernel_shape(kernel_shape)

    def set_kernel_shape(self, kernel_shape: tuple[int, int, int, int] | None) -> None:
        """Check the kernel shape (R, R, C, M) and derive padding and delta (None: all three unset, as deel-lip)."""
        if kernel_shape is None:
            self.kernel_shape = self.padding = self.delta = None
            return
        shape = tuple(int(dim) for dim in kernel_shape)
        if len(shape) != 4 or shape[0] != shape[1]:
            raise ValueError(f"kernel_shape must be (R, R, C, M) with a square kernel, got {kernel_shape!r}.")
        size, _, c_in, c_out = shape
        if size % 2 == 0:
            raise ValueError(f"Lorth needs an odd kernel size, got kernel_shape {kernel_shape!r}.")
        s2 = self.stride**self.dim
        if c_in * s2 >= c_out:  # row-orthogonal case
            if c_out > c_in * size**self.dim:
                raise ValueError(
                    f"Impossible RO configuration for an orthogonal convolution: kernel_shape {shape}, "
                    f"stride {self.stride} (needs M <= C R^2)."
                )
        elif self.stride > size:  # column-orthogonal case
            raise ValueError(
                f"Impossible CO configuration for an orthogonal convolution: stride {self.stride} > kernel size {size}."
            )
        if c_in * s2 == c_out:
            warnings.warn(f"Lorth: the configuration C * stride^2 = M ({shape}) is hard to optimize.", stacklevel=2)
        self.kernel_shape = shape
        self.padding = ((size - 1) // self.stride) * self.stride
        excess = c_in - s2 * c_out if self.conv_transpose else c_out - s2 * c_in
        self.delta = max(0, excess)

    def compute_lorth(self, w):
        """||conv(W, W) - I_centre||_F^2 - delta for a kernel `w` of the set shape."""
        if self.kernel_shape is None:
            raise ValueError("Lorth2D needs a kernel shape: pass kernel_shape or call set_kernel_shape first.")
        if tuple(w.shape) != self.kernel_shape:
            raise ValueError(f"kernel of shape {tuple(w.shape)} given to a Lorth2D set for {self.kernel_shape}.")
        w = ops.cast(w, "float32")
        c_out = self.kernel_shape[3]
        pad = self.padding
        images = ops.pad(ops.transpose(w, (3, 0, 1, 2)), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        output = ops.conv(images, w, strides=self.stride, padding="valid")  # (M, out, out, M)
        out_size = output.shape[1]
        centre = out_size // 2
        position = ops.reshape(ops.one_hot(centre * out_size + centre, out_size * out_size), (1, out_size, out_size, 1))
        target = position * ops.reshape(ops.eye(c_out), (c_out, 1, 1, c_out))
        return ops.sum(ops.square(output - target)) - self.delta


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class LorthRegularizer(keras.regularizers.Regularizer):
    """lambda_lorth * Lorth2D(W): pushes a Conv2D kernel towards an orthogonal convolution.

    Args:
        kernel_shape: (R, R, C, M), or None: taken from the first kernel seen.
        stride: stride of the convolution.
        lambda_lorth: weight of the penalty (>= 0).
        dim: 2 (only 2-D convolutions are implemented).
        conv_transpose: the kernel belongs to a transposed convolution.

    Examples:
        >>> conv = keras.layers.Conv2D(16, 3, kernel_regularizer=LorthRegularizer((3, 3, 8, 16), lambda_lorth=10.0))
    """

    def __init__(
        self,
        kernel_shape: tuple[int, int, int, int] | None = None,
        stride: int = 1,
        lambda_lorth: float = 1.0,
        dim: int = 2,
        conv_transpose: bool = False,
    ) -> None:
        if dim != 2:
            raise NotImplementedError(f"LorthRegularizer supports dim=2 only, got dim={dim!r}.")
        self.dim = 2
        self.lambda_lorth = check_number(lambda_lorth, "lambda_lorth", minimum=0)
        self.stride = stride
        self.conv_transpose = bool(conv_transpose)
        self.lorth = Lorth2D(kernel_shape=kernel_shape, stride=stride, conv_transpose=conv_transpose)

    @property
    def kernel_shape(self):
        return self.lorth.kernel_shape

    def set_kernel_shape(self, kernel_shape):
        """Set the kernel shape (R, R, C, M) (deel-lip's method)."""
        self.lorth.set_kernel_shape(kernel_shape)

    def __call__(self, x):
        if self.lorth.kernel_shape is None:
            self.lorth.set_kernel_shape(x.shape)
        return self.lambda_lorth * self.lorth.compute_lorth(x)

    def get_config(self):
        return {
            "kernel_shape": self.kernel_shape,
            "stride": self.stride,
            "lambda_lorth": self.lambda_lorth,
            "dim": self.dim,
            "conv_transpose": self.conv_transpose,
        }


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class OrthDenseRegularizer(keras.regularizers.Regularizer):
    """lambda_orth * ||W W^T - I||_F^2, on the smaller of W W^T and W^T W.

    Args:
        lambda_orth: weight of the penalty (>= 0).

    Examples:
        >>> dense = keras.layers.Dense(8, kernel_regularizer=OrthDenseRegularizer(1.0))
    """

    def __init__(self, lambda_orth: float = 1.0) -> None:
        self.lambda_orth = check_number(lambda_orth, "lambda_orth", minimum=0)

    def __call__(self, x):
        if len(x.shape) != 2:
            raise ValueError(f"OrthDenseRegularizer needs a 2-D kernel, got shape {tuple(x.shape)}.")
        w = ops.cast(x, "float32")
        gram = ops.matmul(w, ops.transpose(w)) if w.shape[0] <= w.shape[1] else ops.matmul(ops.transpose(w), w)
        return self.lambda_orth * ops.sum(ops.square(gram - ops.eye(gram.shape[0])))

    def get_config(self):
        return {"lambda_orth": self.lambda_orth}
