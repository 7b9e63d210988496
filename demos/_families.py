"""One network skeleton, built with each family of 1-Lipschitz layers (demos/layer_comparison.py).

Every family gets the same skeleton, widths and depth, so that a comparison at equal
wall-clock budget compares the layers, not the architectures:

    InvertibleDownSampling(2)
    stage(width):      entry conv -> width channels, activation, one block of width channels
    InvertibleDownSampling(2)
    stage(2 * width):  entry conv -> 2 width channels, activation, one block
    Flatten, hidden dense layer (`dense_width`), activation, dense logits

The "entry conv" changes the number of channels; the "block" keeps it. For the plain
convolution families (spectral/Björck, BCOP, AOL, AOC) both are the family's 3 x 3
convolution followed by GroupSort2. The residual families (SLL, CPL, LiResNet) cannot
change the number of channels: their entry conv is the one their papers pair them with
(AOL for SLL as in Araujo et al.'s layout, a spectral convolution for CPL and LiResNet),
and the block is the residual layer (SLL and CPL carry their own ReLU; the LiResNet
block is linear and is followed by GroupSort2).
"""

import keras

from deel_lip_ext.layers import (
    AOCConv2D,
    AOLConv2D,
    AOLDense,
    BCOPConv2D,
    BjorckDense,
    ChordDense,
    CPLConv2D,
    CPLDense,
    GroupSort2,
    InvertibleDownSampling,
    LiResNetBlock,
    SLLConv2D,
    SLLDense,
    SpectralConv2D,
    SpectralDense,
)
from deel_lip_ext.model import Sequential

# family -> (entry conv, block, hidden dense, logits dense, does the block carry its own activation)
_PARTS = {
    "spectral": (
        lambda c, name: SpectralConv2D(c, 3, padding="circular", name=name),
        lambda c, name: SpectralConv2D(c, 3, padding="circular", name=name),
        lambda units, name: SpectralDense(units, name=name),
        lambda units, name: SpectralDense(units, name=name),
        False,
    ),
    "bcop": (
        lambda c, name: BCOPConv2D(c, 3, name=name),
        lambda c, name: BCOPConv2D(c, 3, name=name),
        lambda units, name: BjorckDense(units, name=name),
        lambda units, name: BjorckDense(units, name=name),
        False,
    ),
    "aol": (
        lambda c, name: AOLConv2D(c, 3, name=name),
        lambda c, name: AOLConv2D(c, 3, name=name),
        lambda units, name: AOLDense(units, name=name),
        lambda units, name: AOLDense(units, name=name),
        False,
    ),
    "aoc": (
        lambda c, name: AOCConv2D(c, 3, name=name),
        lambda c, name: AOCConv2D(c, 3, name=name),
        lambda units, name: SpectralDense(units, name=name),
        lambda units, name: SpectralDense(units, name=name),
        False,
    ),
    "sll": (
        lambda c, name: AOLConv2D(c, 3, name=name),
        lambda c, name: SLLConv2D(c, 3, name=name),
        lambda units, name: SLLDense(units, name=name),
        lambda units, name: AOLDense(units, name=name),
        True,
    ),
    "cpl": (
        lambda c, name: SpectralConv2D(c, 3, padding="circular", name=name),
        lambda c, name: CPLConv2D(c, 3, name=name),
        lambda units, name: CPLDense(units, name=name),
        lambda units, name: SpectralDense(units, name=name),
        True,
    ),
    "liresnet": (
        lambda c, name: SpectralConv2D(c, 3, padding="circular", name=name),
        lambda c, name: LiResNetBlock(3, name=name),
        lambda units, name: ChordDense(units, name=name),
        lambda units, name: ChordDense(units, name=name),
        False,
    ),
}
FAMILIES = tuple(_PARTS)
FAMILY_LABELS = {
    "spectral": "Spectral (Björck)",
    "bcop": "BCOP",
    "aol": "AOL",
    "aoc": "AOC",
    "sll": "SLL",
    "cpl": "CPL",
    "liresnet": "LiResNet-style",
}


def build_family_network(family, input_shape=(28, 28, 1), num_classes=10, width=16, dense_width=128):
    """The shared skeleton (module docstring) built with the layers of `family`.

    Args:
        family: one of `FAMILIES`.
        input_shape: (height, width, channels), height and width divisible by 4.
        num_classes: number of logits.
        width: channels of the first stage (the second has twice as many); even.
        dense_width: units of the hidden dense layer; even.

    Returns:
        A `deel_lip_ext.model.Sequential` named "<family>_net".

    Examples:
        >>> model = build_family_network("aol", (32, 32, 3), width=16)
    """
    if family not in _PARTS:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}.")
    if width < 2 or width % 2 or dense_width < 2 or dense_width % 2:
        raise ValueError(f"width and dense_width must be even integers >= 2, got {width!r} and {dense_width!r}.")
    entry, block, hidden, logits, block_has_activation = _PARTS[family]
    layers = [keras.Input(tuple(input_shape))]
    for stage, channels in enumerate((width, 2 * width), start=1):
        layers += [InvertibleDownSampling(2, name=f"down{stage}"), entry(channels, f"entry{stage}")]
        layers += [GroupSort2(name=f"entry{stage}_act"), block(channels, f"block{stage}")]
        if not block_has_activation:
            layers.append(GroupSort2(name=f"block{stage}_act"))
    layers += [keras.layers.Flatten(name="flatten"), hidden(dense_width, "dense")]
    if not block_has_activation:
        layers.append(GroupSort2(name="dense_act"))
    layers.append(logits(num_classes, "logits"))
    return Sequential(layers, name=f"{family}_net")
