"""The BCOP paper's architectures (Li et al., NeurIPS 2019), for any of its convolutions.

`kw_small`, `kw_large` (Wong et al.'s "Small"/"Large" as the BCOP code runs
them), `fc3` (Anil et al.'s baseline) and `dcgan_critic` (Wasserstein
estimation). As in the BCOP code: strided convolutions are an
`InvertibleDownSampling(2)` followed by a 2 x 2 convolution, every
convolution is circular, activations are `MaxMinHalves`, fully connected layers
are `BjorckDense`, no pooling, no batch normalization. `conv` picks the
convolution of the paper's Table 1: "bcop", "rko", "ossn" or "svcm" (train
"svcm" models with the `SVCMProjection` callback).

Every model is a `deel_lip_ext.model.Sequential`: `model.vanilla_export()`
gives plain Keras, and `deel_lip_ext.utils.model_lipschitz_bound(model)`
its measured Lipschitz bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from deel_lip_ext._validation import check_bool, check_int, int_pair
from deel_lip_ext.layers.activations import MaxMinHalves
from deel_lip_ext.layers.base import LipschitzLayer
from deel_lip_ext.layers.bcop import BCOPConv2D, BjorckDense
from deel_lip_ext.layers.conv_baselines import OSSNConv2D, RKOConv2D, SVCMConv2D
from deel_lip_ext.layers.resampling import InvertibleDownSampling
from deel_lip_ext.model import Sequential

__all__ = ["CONVOLUTIONS", "kw_small", "kw_large", "fc3", "dcgan_critic", "NearestUpSampling2D"]

CONVOLUTIONS = {"bcop": BCOPConv2D, "rko": RKOConv2D, "ossn": OSSNConv2D, "svcm": SVCMConv2D}
ACTIVATIONS = ("maxmin", "relu")


def _conv_class(conv):
    if conv not in CONVOLUTIONS:
        raise ValueError(f"conv must be one of {sorted(CONVOLUTIONS)}, got {conv!r}.")
    return CONVOLUTIONS[conv]


def _input(input_shape):
    valid = isinstance(input_shape, (tuple, list)) and len(input_shape) == 3
    if not (valid and all(isinstance(d, int) and d > 0 for d in input_shape)):
        raise ValueError(f"input_shape must be (height, width, channels) of positive ints, got {input_shape!r}.")
    return keras.Input(tuple(input_shape))


def _activation(activation, name):
    if activation == "maxmin":
        return MaxMinHalves(name=name)
    if activation == "relu":
        return keras.layers.ReLU(name=name)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}.")


def _conv_block(conv_class, filters, kernel_size, index, downsample, activation="maxmin"):
    """[InvertibleDownSampling(2)] + conv (circular) + activation, named convN / actN."""
    layers = [InvertibleDownSampling(2, name=f"downsampling{index}")] if downsample else []
    layers.append(conv_class(filters, kernel_size, padding="circular", name=f"conv{index}"))
    layers.append(_activation(activation, f"act{index}"))
    return layers


def _dense_head(widths, num_classes):
    """Flatten, BjorckDense + MaxMinHalves for each hidden width, BjorckDense logits."""
    layers = [keras.layers.Flatten(name="flatten")]
    for index, width in enumerate(widths, start=1):
        layers += [BjorckDense(width, name=f"dense{index}"), MaxMinHalves(name=f"dense_act{index}")]
    layers.append(BjorckDense(num_classes, name="logits"))
    return layers


def kw_small(conv: str = "bcop", input_shape: tuple[int, ...] = (28, 28, 1), num_classes: int = 10):
    """Wong et al.'s "Small" network as BCOP runs it.

    conv 16, 4x4, s2 -> unshuffle + conv(4 c_in -> 16, 2x2); MaxMinHalves;
    conv 32, 4x4, s2 -> unshuffle + conv(64 -> 32, 2x2); MaxMinHalves;
    flatten; FC 100; MaxMinHalves; FC `num_classes`.

    Args:
        conv: "bcop", "rko", "ossn" or "svcm".
        input_shape: (height, width, channels), height and width divisible by 4.
        num_classes: number of logits.

    Examples:
        >>> model = kw_small("bcop", (32, 32, 3))  # CIFAR-10: flatten 32 * 8 * 8 = 2048
    """
    conv_class, inputs = _conv_class(conv), _input(input_shape)
    check_int(num_classes, "num_classes")
    layers = [inputs]
    layers += _conv_block(conv_class, 16, 2, 1, downsample=True)
    layers += _conv_block(conv_class, 32, 2, 2, downsample=True)
    layers += _dense_head([100], num_classes)
    return Sequential(layers, name=f"kw_small_{conv}")


def kw_large(conv: str = "bcop", input_shape: tuple[int, ...] = (28, 28, 1), num_classes: int = 10):
    """Wong et al.'s "Large" network as BCOP runs it.

    conv(c_in -> 32, 3x3); MaxMinHalves; unshuffle + conv(128 -> 32, 2x2); MaxMinHalves;
    conv(32 -> 64, 3x3); MaxMinHalves; unshuffle + conv(256 -> 64, 2x2); MaxMinHalves;
    flatten; FC 512; MaxMinHalves; FC 512; MaxMinHalves; FC `num_classes`.

    Args:
        conv: "bcop", "rko", "ossn" or "svcm".
        input_shape: (height, width, channels), height and width divisible by 4.
        num_classes: number of logits.

    Examples:
        >>> model = kw_large("rko", (28, 28, 1))  # MNIST: flatten 64 * 7 * 7 = 3136
    """
    conv_class, inputs = _conv_class(conv), _input(input_shape)
    check_int(num_classes, "num_classes")
    layers = [inputs]
    layers += _conv_block(conv_class, 32, 3, 1, downsample=False)
    layers += _conv_block(conv_class, 32, 2, 2, downsample=True)
    layers += _conv_block(conv_class, 64, 3, 3, downsample=False)
    layers += _conv_block(conv_class, 64, 2, 4, downsample=True)
    layers += _dense_head([512, 512], num_classes)
    return Sequential(layers, name=f"kw_large_{conv}")


def fc3(input_shape: tuple[int, ...] = (28, 28, 1), num_classes: int = 10, width: int = 1024):
    """Anil et al.'s fully connected baseline: flatten; 3 x (FC `width`; MaxMinHalves); FC `num_classes`.

    Args:
        input_shape: shape of one input.
        num_classes: number of logits.
        width: hidden width (1024 in the papers).

    Examples:
        >>> model = fc3((32, 32, 3))
    """
    inputs = _input(input_shape)
    check_int(num_classes, "num_classes")
    if isinstance(width, bool) or not isinstance(width, int) or width < 2 or width % 2:
        raise ValueError(f"width must be an even integer >= 2 (MaxMinHalves pairs units), got {width!r}.")
    return Sequential([inputs] + _dense_head([width] * 3, num_classes), name="fc3")


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class NearestUpSampling2D(LipschitzLayer, keras.layers.Layer):
    """Nearest-neighbour upsampling by (s_h, s_w), optionally rescaled to an isometry.

    Copying each pixel s_h * s_w times multiplies the L2 norm by
    sqrt(s_h * s_w). With `isometric=True` the output is divided by that
    factor, so the layer is norm-preserving (1-Lipschitz and GNP); with
    `isometric=False` it is plain nearest upsampling, sqrt(s_h * s_w)-Lipschitz
    (what the BCOP code's DCGAN critic does on 32 x 32 inputs).

    Args:
        size: int or pair of ints >= 1.
        isometric: divide by sqrt(s_h * s_w).
        k_coef_lip: extra factor on the output.
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, trainable, ...).

    Examples:
        >>> NearestUpSampling2D(2)(keras.ops.ones((1, 4, 4, 3))).shape
        (1, 8, 8, 3)
    """

    def __init__(self, size: int = 2, isometric: bool = True, k_coef_lip: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._init_lipschitz(k_coef_lip)
        self.size = int_pair(size, "size")
        self.isometric = check_bool(isometric, "isometric")
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def gain(self):
        """The layer's exact L2 gain (all its singular values are equal)."""
        copies = math.sqrt(self.size[0] * self.size[1])
        return self.k_coef_lip * (1.0 if self.isometric else copies)

    def lipschitz_sv(self):
        return self.gain(), self.gain()

    def _lipschitz_constant(self, norm, input_shape):
        # Copies times gain / sqrt(copies): L2 gain exactly; l_inf gain / sqrt(copies).
        return self.gain() if norm == "l2" else self.gain() / math.sqrt(self.size[0] * self.size[1])

    def call(self, inputs):
        outputs = ops.repeat(ops.repeat(inputs, self.size[0], axis=1), self.size[1], axis=2)
        return outputs * (self.gain() / math.sqrt(self.size[0] * self.size[1]))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]):
        batch, height, width, channels = input_shape
        return (
            batch,
            None if height is None else height * self.size[0],
            None if width is None else width * self.size[1],
            channels,
        )

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"size": self.size, "isometric": self.isometric, "k_coef_lip": self.k_coef_lip})
        return config


def dcgan_critic(
    conv: str = "bcop",
    input_shape: tuple[int, ...] = (64, 64, 3),
    activation: str | Callable | None = "maxmin",
    isometric_upsampling: bool = True,
):
    """The BCOP paper's DCGAN critic for Wasserstein-1 estimation.

    [nearest upsampling to 64 x 64]; four (unshuffle + 2x2 conv) with 64, 128,
    256, 512 channels, each followed by the activation; flatten
    (512 * 4 * 4 = 8192); BjorckDense(1). No batch normalization.

    Inputs smaller than 64 x 64 (CIFAR-10's 32 x 32) are upsampled by nearest
    neighbours, as in the BCOP code. Plain nearest x2 upsampling has gain 2,
    which makes the BCOP code's CIFAR critic 2-Lipschitz; by default the
    upsampling is rescaled to an isometry (`NearestUpSampling2D`), so the
    critic is 1-Lipschitz and estimates W1 itself. `isometric_upsampling=False`
    reproduces the BCOP code.

    Args:
        conv: "bcop", "rko" or "ossn" ("svcm" was intractable in the paper but works).
        input_shape: (height, width, channels); 64 must be a multiple of height and width.
        activation: "maxmin" or "relu".
        isometric_upsampling: see above.

    Examples:
        >>> critic = dcgan_critic("bcop", (32, 32, 3))  # 1-Lipschitz critic for CIFAR-10
    """
    conv_class, inputs = _conv_class(conv), _input(input_shape)
    height, width = input_shape[:2]
    if 64 % height or 64 % width:
        raise ValueError(f"input_shape {tuple(input_shape)}: 64 must be a multiple of the height and the width.")
    layers = [inputs]
    if (height, width) != (64, 64):
        factor = (64 // height, 64 // width)
        layers.append(NearestUpSampling2D(factor, isometric=isometric_upsampling, name="upsampling"))
    for index, filters in enumerate((64, 128, 256, 512), start=1):
        layers += _conv_block(conv_class, filters, 2, index, downsample=True, activation=activation)
    layers += [keras.layers.Flatten(name="flatten"), BjorckDense(1, name="critic")]
    return Sequential(layers, name=f"dcgan_critic_{conv}_{activation}")
