"""A small LiResNet (Hu et al., NeurIPS 2023) for MNIST (28x28x1) or CIFAR (32x32x3) sized inputs.

stem `SpectralConv2D(width, 3)` + `GroupSort2`; `depth` x (`LiResNetBlock(3)` + `GroupSort2`);
neck `SpectralConv2D(neck_filters, 4, strides=4, padding="valid")` + `GroupSort2`;
flatten; `ChordDense(dense_width)` + `GroupSort2`; `ChordDense(num_classes)` logits.

Train it with `deel_lip_ext.losses.EMMA` (LiResNet's loss) or any margin loss;
certify with `deel_lip_ext.utils.model_lipschitz_bound(model)`: the blocks
answer with the exact norm of their normalized operator, not the power
iteration's estimate.
"""

from __future__ import annotations

import keras

from deel_lip_ext._validation import check_int

from deel_lip_ext.layers.activations import GroupSort2
from deel_lip_ext.layers.convolutional import SpectralConv2D
from deel_lip_ext.layers.residual import ChordDense, LiResNetBlock
from deel_lip_ext.model import Sequential

__all__ = ["liresnet"]


def _positive_int(value, name, even=False):
    value = check_int(value, name)
    if even and value % 2:
        raise ValueError(f"{name} must be a positive even integer (GroupSort2 sorts channel pairs), got {value!r}.")
    return value


def liresnet(
    input_shape: tuple[int, int, int] = (32, 32, 3),
    num_classes: int = 10,
    width: int = 32,
    depth: int = 4,
    neck_filters: int = 64,
    dense_width: int = 256,
    n_power_iterations: int = 1,
) -> Sequential:
    """A small LiResNet: stem conv, `depth` linear residual blocks, a stride-4 neck, CHORD dense head.

    Args:
        input_shape: (height, width, channels), height and width divisible by 4 (28x28x1, 32x32x3).
        num_classes: number of logits.
        width: channels of the residual stage (even).
        depth: number of `LiResNetBlock`s.
        neck_filters: channels of the stride-4 neck convolution (even).
        dense_width: width of the hidden `ChordDense` layer (even).
        n_power_iterations: power iterations per training step of each block.

    Returns:
        A `deel_lip_ext.model.Sequential`.

    Examples:
        >>> model = liresnet((28, 28, 1), num_classes=10, width=16, depth=2)
        >>> model.compile(optimizer="adam", loss=EMMA(epsilon=1.58, lipschitz=math.sqrt(2)))
    """
    valid = isinstance(input_shape, (tuple, list)) and len(input_shape) == 3
    if not (valid and all(isinstance(d, int) and d > 0 for d in input_shape) and not input_shape[0] % 4):
        raise ValueError(
            f"input_shape must be (height, width, channels), height and width divisible by 4, got {input_shape!r}."
        )
    if input_shape[1] % 4:
        raise ValueError(f"input_shape's width must be divisible by 4, got {input_shape!r}.")
    _positive_int(num_classes, "num_classes")
    _positive_int(width, "width", even=True)
    _positive_int(depth, "depth")
    _positive_int(neck_filters, "neck_filters", even=True)
    _positive_int(dense_width, "dense_width", even=True)
    layers = [keras.Input(tuple(input_shape)), SpectralConv2D(width, 3, name="stem"), GroupSort2(name="stem_act")]
    for index in range(1, depth + 1):
        layers += [
            LiResNetBlock(3, n_power_iterations=n_power_iterations, name=f"block{index}"),
            GroupSort2(name=f"block{index}_act"),
        ]
    layers += [
        SpectralConv2D(neck_filters, 4, strides=4, padding="valid", name="neck"),
        GroupSort2(name="neck_act"),
        keras.layers.Flatten(name="flatten"),
        ChordDense(dense_width, name="dense"),
        GroupSort2(name="dense_act"),
        ChordDense(num_classes, name="logits"),
    ]
    return Sequential(layers, name="liresnet")
