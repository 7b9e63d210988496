"""l_inf-dist Net and l_inf-dist Net + MLP (Zhang et al., ICML 2021; ICLR 2022).

Both take pixel images and normalize them inside the model with one scalar
std (an isotropic l_inf ball stays isotropic), so attacks and certificates
work in pixel units and the logits are (1 / std)-Lipschitz in l_inf.
Papers' settings: MNIST/FMNIST depth 5, width 5120 (784 -> 5120 x 4 -> 10);
CIFAR-10 depth 6; the hybrid uses 4 (MNIST) or 5 (CIFAR) l_inf-dist layers
and a Dense(512) -> tanh -> Dense head.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import keras
import numpy as np

from deel_lip_ext._validation import check_int

from deel_lip_ext.layers.linf import LInfDistDense, LogitScale

__all__ = ["linf_dist_net", "linf_dist_net_mlp", "hybrid_head", "hybrid_training_model"]

FEATURES_LAYER = "features"


def _stem(input_shape, mean, std):
    """Input, the (x - mean) / std normalization when std is given, and Flatten."""
    layers = [keras.Input(shape=tuple(input_shape))]
    if std is not None:
        if isinstance(std, bool) or not isinstance(std, numbers.Real) or not std > 0:
            raise ValueError(f"std must be one positive number (keeps the l_inf ball isotropic), got {std!r}.")
        offset = -np.asarray(0.0 if mean is None else mean, dtype="float32") / std
        layers.append(keras.layers.Rescaling(scale=1.0 / std, offset=offset.tolist(), name="normalization"))
    elif mean is not None:
        raise ValueError("mean needs std as well (pass std=1.0 to only subtract the mean).")
    layers.append(keras.layers.Flatten())
    return layers


def _hidden_layers(depth, width, p, identity_value, chunk_size, last_name=None):
    layers = []
    for index in range(depth):
        name = last_name if index == depth - 1 else None
        layers.append(
            LInfDistDense(
                width,
                p=p,
                mean_shift=True,
                use_bias=False,
                identity_init=True,
                identity_value=identity_value,
                chunk_size=chunk_size,
                name=name,
            )
        )
    return layers


def linf_dist_net(
    depth: int = 5,
    width: int = 5120,
    input_shape: tuple[int, ...] = (28, 28, 1),
    num_classes: int = 10,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    p: float = 8.0,
    identity_value: float = 10.0,
    logit_scale: bool = False,
    chunk_size: int | None = None,
    name: str = "linf_dist_net",
) -> keras.Sequential:
    """The l_inf-dist Net: `depth` l_inf-dist layers, the last one giving the (negated) logits.

    Hidden layers: mean shift, no bias, identity init; last layer: bias, no
    mean shift, output negated. At p = inf the logits are (1 / std)-Lipschitz
    in l_inf (1 without normalization).

    Args:
        depth: number of l_inf-dist layers (>= 1), the output layer included.
        width: units of the hidden layers (5120 in the papers).
        input_shape: shape of one input.
        num_classes: number of logits.
        mean: normalization (x - mean) / std inside the model, std one
            scalar (MNIST 0.1307 / 0.3081); None: no normalization.
        std: normalization (x - mean) / std inside the model, std one
            scalar (MNIST 0.1307 / 0.3081); None: no normalization.
        p: initial norm order of every layer (see `linf.LpScheduler`).
        identity_value: identity init value (10).
        logit_scale: append a `LogitScale` layer (v2's learnable s, read by
            `linf.ClippedHingeCrossEntropy(logit_scale=model.layers[-1])`).
        chunk_size: output units per chunk in every layer (None: automatic).
        name: model name.

    Returns:
        A `keras.Sequential` model taking pixel images.

    Examples:
        >>> model = linf_dist_net(depth=5, width=5120, mean=0.1307, std=0.3081)
    """
    depth = check_int(depth, "depth")
    width = check_int(width, "width")
    num_classes = check_int(num_classes, "num_classes")
    layers = _stem(input_shape, mean, std)
    layers += _hidden_layers(depth - 1, width, p, identity_value, chunk_size)
    layers.append(
        LInfDistDense(
            num_classes,
            p=p,
            mean_shift=False,
            use_bias=True,
            negate=True,
            identity_value=identity_value,
            chunk_size=chunk_size,
            name="logits",
        )
    )
    if logit_scale:
        layers.append(LogitScale(name="logit_scale"))
    return keras.Sequential(layers, name=name)


def linf_dist_net_mlp(
    depth: int = 4,
    width: int = 5120,
    hidden_units: int = 512,
    input_shape: tuple[int, ...] = (28, 28, 1),
    num_classes: int = 10,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    p: float = 8.0,
    identity_value: float = 10.0,
    chunk_size: int | None = None,
    name: str = "linf_dist_net_mlp",
) -> keras.Sequential:
    """The l_inf-dist Net + MLP: `depth` l_inf-dist feature layers, then Dense(hidden) -> tanh -> Dense.

    The head is certified by interval arithmetic (`linf.certify_ibp`), so it
    needs no Lipschitz constraint. Its Dense layers start at N(0, 1 / fan_in)
    with zero biases (the papers scale N(0, 1) weights by 1 / sqrt(fan_in) in
    the forward pass: the same function at init).

    Args:
        depth: number of l_inf-dist feature layers (4 for MNIST, 5 for CIFAR).
        width: their units.
        hidden_units: width of the head (512 in the papers).
        input_shape: as in `linf_dist_net`.
        num_classes: as in `linf_dist_net`.
        mean: as in `linf_dist_net`.
        std: as in `linf_dist_net`.
        p: as in `linf_dist_net`.
        identity_value: as in `linf_dist_net`.
        chunk_size: as in `linf_dist_net`.
        name: as in `linf_dist_net`.

    Returns:
        A `keras.Sequential` model; its last l_inf-dist layer is named "features".

    Examples:
        >>> model = linf_dist_net_mlp(depth=4, width=5120, mean=0.1307, std=0.3081)
    """
    depth = check_int(depth, "depth")
    width = check_int(width, "width")
    hidden_units = check_int(hidden_units, "hidden_units")
    num_classes = check_int(num_classes, "num_classes")
    layers = _stem(input_shape, mean, std)
    layers += _hidden_layers(depth, width, p, identity_value, chunk_size, last_name=FEATURES_LAYER)
    for units, fan_in, activation, layer_name in (
        (hidden_units, width, "tanh", "head_hidden"),
        (num_classes, hidden_units, None, "logits"),
    ):
        layers.append(
            keras.layers.Dense(
                units,
                activation=activation,
                kernel_initializer=keras.initializers.RandomNormal(stddev=1.0 / np.sqrt(fan_in)),
                name=layer_name,
            )
        )
    return keras.Sequential(layers, name=name)


def hybrid_head(model: keras.Model) -> list:
    """The layers after the "features" layer of a `linf_dist_net_mlp` model (for `HybridIntervalCrossEntropy`).

    Args:
        model: a model built by `linf_dist_net_mlp` (with a layer named "features"; `ValueError` otherwise).

    Returns:
        The list of the head's layers, in order.
    """
    names = [layer.name for layer in model.layers]
    if FEATURES_LAYER not in names:
        raise ValueError(
            f"model {model.name!r} has no layer named {FEATURES_LAYER!r}; build it with linf_dist_net_mlp."
        )
    return model.layers[names.index(FEATURES_LAYER) + 1 :]


def hybrid_training_model(model: keras.Model) -> keras.Model:
    """A model sharing `model`'s layers with outputs {"logits", "features"}, to train with
    `linf.HybridIntervalCrossEntropy` on "features".

    Args:
        model: a model built by `linf_dist_net_mlp` (with a layer named "features"; `ValueError` otherwise).

    Returns:
        A functional `keras.Model` (its weights are `model`'s).

    Examples:
        >>> train_model = hybrid_training_model(model)
        >>> train_model.compile("adam", loss={"features": loss, "logits": None})
        >>> train_model.fit(x, {"features": y, "logits": y})
    """
    hybrid_head(model)
    return keras.Model(
        model.inputs,
        {"logits": model.outputs[0], FEATURES_LAYER: model.get_layer(FEATURES_LAYER).output},
        name=f"{model.name}_training",
    )
