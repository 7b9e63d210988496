"""deel-lip-ext: provably k-Lipschitz Keras 3 layers, certification and plain-Keras export.

`import deel_lip_ext` imports every submodule, so every class is registered for loading
`.keras` files (`keras.saving.load_model("model.keras")` needs nothing else) and
`deel_lip_ext.layers`, `deel_lip_ext.losses`, ... are attributes of the package. As in
deel-lip, `Sequential`, `Model` and `vanillaModel` are also top-level names. No submodule
imports TensorFlow at import time, so the package imports on the JAX and torch backends.

Examples:
    >>> import deel_lip_ext
    >>> model = deel_lip_ext.Sequential([keras.Input((4,)), deel_lip_ext.layers.SpectralDense(2)])
    >>> plain = deel_lip_ext.vanillaModel(model)
"""

# Layers first: the other modules build on them.
from deel_lip_ext import layers  # noqa: I001
from deel_lip_ext import (
    activations,
    attacks,
    callbacks,
    certification,
    constraints,
    datasets,
    distance,
    initializers,
    interval,
    linf,
    losses,
    metrics,
    model,
    model_bound,
    normalizers,
    parametrizations,
    plotting,
    regularization,
    regularizers,
    utils,
    zoo,
)
from deel_lip_ext.model import Model, Sequential

__version__ = "0.2.0"

vanillaModel = model.vanilla_model  # deel-lip's name of `deel_lip_ext.model.vanilla_model`

__all__ = [
    "Model",
    "Sequential",
    "vanillaModel",
    "activations",
    "attacks",
    "callbacks",
    "certification",
    "constraints",
    "datasets",
    "distance",
    "initializers",
    "interval",
    "layers",
    "linf",
    "losses",
    "metrics",
    "model",
    "model_bound",
    "normalizers",
    "parametrizations",
    "plotting",
    "regularization",
    "regularizers",
    "utils",
    "zoo",
]
