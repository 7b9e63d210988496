"""A conv pinned to its build size runs at another size when Keras' tf.function relaxes the input shape.

model.predict / model.__call__ under tf.function(reduce_retracing=True) traces with None spatial dimensions after
a second input size is seen: `check_input_size` sees None and lets the call through, while the bound is the one of
the build size. Prints the exact norm at 9x9 vs the bound.
"""

import harness  # noqa: F401
import keras
import numpy as np
import tensorflow as tf

from deel_lip_ext import layers as lip
from deel_lip_ext.utils import model_lipschitz_bound

for cls, kwargs in [
    (lip.SpectralConv2D, {"padding": "same"}),
    (lip.FrobeniusConv2D, {"padding": "same"}),
    (lip.SpectralConv2D, {"padding": "circular"}),
    (lip.BCOPConv2D, {"padding": "circular"}),
    (lip.PadConv2D, {"padding": "reflect"}),
]:
    conv = cls(2, 3, use_bias=False, **kwargs)
    model = keras.Sequential([conv])  # no Input: built by its first call
    model(np.zeros((1, 3, 3, 1), "float32"))
    bound = model_lipschitz_bound(model)

    @tf.function(reduce_retracing=True)
    def run(x):
        return model(x, training=False)

    outputs = {}
    for size in (3, 5, 9):
        eye = np.eye(size * size, dtype="float32").reshape(-1, size, size, 1)
        try:
            outputs[size] = run(eye).numpy().reshape(size * size, -1)
        except Exception as error:  # noqa: BLE001
            outputs[size] = f"{type(error).__name__}"
    for size, out in outputs.items():
        exact = np.linalg.norm(out.astype("float64"), 2) if not isinstance(out, str) else out
        print(f"{cls.__name__:16s} {kwargs['padding']:9s} size {size}: bound {bound:.6f} exact {exact}")
    # model.predict on a second size (Keras' own predict function)
    try:
        eye9 = np.eye(81, dtype="float32").reshape(-1, 9, 9, 1)
        model.predict(np.zeros((2, 5, 5, 1), "float32"), verbose=0)
        out = model.predict(eye9, verbose=0).reshape(81, -1)
        print(f"   predict at 9x9 after 5x5: exact {np.linalg.norm(out.astype('float64'), 2):.6f}")
    except Exception as error:  # noqa: BLE001
        print(f"   predict at 9x9 refused: {type(error).__name__}: {str(error)[:120]}")
