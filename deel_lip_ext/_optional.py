"""The one way the package imports optional third-party packages: when a function first needs them.

TensorFlow (tf.data pipelines, gradient tapes, XLA, TensorBoard), TensorFlow
Datasets and matplotlib are not needed to import `deel_lip_ext`, so no module
imports them at import time (the package then imports on the JAX and torch
backends, and without matplotlib). A function that needs one calls
`optional_import`, which names the missing package and how to install it.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

__all__ = ["optional_import", "tensorflow"]

# Package -> what to install when it is missing.
_INSTALL = {
    "tensorflow": "pip install tensorflow",
    "tensorflow_datasets": "pip install tensorflow-datasets",
    "matplotlib": "pip install matplotlib",
}


def optional_import(name: str, feature: str = "this feature") -> ModuleType:
    """The module `name` (e.g. "tensorflow", "matplotlib.pyplot"), or an ImportError saying what needs it.

    Args:
        name: dotted module name.
        feature: what needs it, for the message.

    Examples:
        >>> tf = optional_import("tensorflow", "evaluate_lip_const")
    """
    # An imported module is returned without calling importlib: inside a `tf.function` AutoGraph
    # tries to convert `importlib.import_module` and warns that it cannot.
    module = sys.modules.get(name)
    if module is not None:
        return module
    try:
        return importlib.import_module(name)
    except ImportError as error:
        package = name.split(".")[0]
        hint = _INSTALL.get(package, f"pip install {package}")
        raise ImportError(f"{feature} needs the optional package {package!r}: {hint}.") from error


def tensorflow(feature: str = "this feature") -> ModuleType:
    """The `tensorflow` module (see `optional_import`)."""
    return optional_import("tensorflow", feature)
