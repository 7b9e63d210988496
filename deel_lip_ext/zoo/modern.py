"""Small networks of the modern 1-Lipschitz layers (AOL, SLL), for MNIST (28x28x1) and CIFAR (32x32x3).

Both are `deel_lip_ext.model.Sequential` models, 1-Lipschitz (L2) from the input to the logits:
`deel_lip_ext.utils.model_lipschitz_bound(model)` certifies it from the weights, and
`model.vanilla_export()` gives plain Keras (SLL blocks become functional blocks of stock layers).
Sizes are small on purpose (a layer comparison at equal depth and width, not a record).
"""

from __future__ import annotations

import keras

from deel_lip_ext.layers.activations import MaxMin
from deel_lip_ext.layers.aol import AOLConv2D, AOLDense
from deel_lip_ext.layers.sll_cpl import SLLConv2D, SLLDense
from deel_lip_ext.model import Sequential
from deel_lip_ext._validation import check_int
from deel_lip_ext.zoo.bcop import _input

__all__ = ["aol_net", "sll_net"]


def aol_net(
    input_shape: tuple[int, int, int] = (28, 28, 1), num_classes: int = 10, width: int = 16, depth: int = 2
) -> Sequential:
    """AOL network: `depth` AOLConv2D(width) + MaxMin, a stride-2 AOLConv2D(2 width) + MaxMin, `depth - 1`
    AOLConv2D(2 width) + MaxMin, flatten, AOLDense(64) + MaxMin, AOLDense(`num_classes`).

    Args:
        input_shape: (height, width, channels), e.g. (28, 28, 1) for MNIST or (32, 32, 3) for CIFAR.
        num_classes: number of logits.
        width: channels of the first stage.
        depth: convolutions per stage.

    Examples:
        >>> model = aol_net((32, 32, 3), width=16)
    """
    inputs = _input(input_shape)
    check_int(num_classes, "num_classes")
    check_int(width, "width")
    check_int(depth, "depth")
    layers = [inputs]
    for index in range(depth):
        layers += [AOLConv2D(width, 3, name=f"conv1_{index}"), MaxMin(name=f"act1_{index}")]
    layers += [AOLConv2D(2 * width, 3, strides=2, name="down"), MaxMin(name="act_down")]
    for index in range(depth - 1):
        layers += [AOLConv2D(2 * width, 3, name=f"conv2_{index}"), MaxMin(name=f"act2_{index}")]
    layers += [keras.layers.Flatten(name="flatten"), AOLDense(64, name="dense"), MaxMin(name="dense_act")]
    layers.append(AOLDense(num_classes, name="logits"))
    return Sequential(layers, name="aol_net")


def sll_net(
    input_shape: tuple[int, int, int] = (28, 28, 1), num_classes: int = 10, width: int = 16, depth: int = 2
) -> Sequential:
    """SLL network (Araujo et al.'s layout, small): an AOLConv2D(width) stem, `depth` SLLConv2D(width)
    blocks, a stride-2 AOLConv2D(2 width), `depth` SLLConv2D(2 width) blocks, flatten, SLLDense(64) on the
    flattened features, AOLDense(`num_classes`).

    Args:
        input_shape: (height, width, channels), e.g. (28, 28, 1) for MNIST or (32, 32, 3) for CIFAR.
        num_classes: number of logits.
        width: channels of the first stage (the SLL blocks' hidden channels too).
        depth: SLL blocks per stage.

    Examples:
        >>> model = sll_net((28, 28, 1), width=16)
    """
    inputs = _input(input_shape)
    check_int(num_classes, "num_classes")
    check_int(width, "width")
    check_int(depth, "depth")
    layers = [inputs, AOLConv2D(width, 3, name="stem")]
    layers += [SLLConv2D(width, 3, name=f"sll1_{index}") for index in range(depth)]
    layers.append(AOLConv2D(2 * width, 3, strides=2, name="down"))
    layers += [SLLConv2D(2 * width, 3, name=f"sll2_{index}") for index in range(depth)]
    layers += [keras.layers.Flatten(name="flatten"), SLLDense(64, name="sll_dense")]
    layers.append(AOLDense(num_classes, name="logits"))
    return Sequential(layers, name="sll_net")
