"""Models built at one input size, then run at another: does Keras refuse, and is the bound still above?

Stock layers (Conv2D, AveragePooling2D, ...) and CPLConv2D do not pin their size; the graph walk bounds each layer
at the shapes of the graph (the build size). If the model runs at another size, the bound may describe another
function.
"""

import harness  # noqa: F401
import keras
import numpy as np

from deel_lip_ext import layers as lip
from deel_lip_ext.utils import model_lipschitz_bound
from harness import affine_matrix, jacobian_lower, pair_search


def stock_conv():
    return keras.layers.Conv2D(1, 3, padding="same", use_bias=False, kernel_initializer="ones")


def cpl_conv():
    return lip.CPLConv2D(2, 3, padding="same", kernel_initializer=keras.initializers.RandomNormal(0, 1, seed=3))


def run(label, make_model, nonlinear=False):
    model = make_model()
    bound = model_lipschitz_bound(model)
    for size in (3, 9):
        try:
            if nonlinear:
                x = np.random.default_rng(0).normal(size=(8, size, size, 1)).astype("float32")
                exact = max(jacobian_lower(model, x), pair_search(model, x, steps=30))
            else:
                exact = np.linalg.norm(affine_matrix(lambda z: model(z).numpy(), (size, size, 1)), 2)
            flag = "VIOLATION" if exact > bound * (1 + 1e-5) else "ok"
            print(f"{flag:9s} {label} run at {size}x{size}: bound {bound:.6f} measured {exact:.6f}")
        except Exception as error:  # noqa: BLE001
            print(f"refused   {label} run at {size}x{size}: {type(error).__name__}: {str(error).splitlines()[0][:150]}")


def seq_no_input(layer_fn):
    def make():
        m = keras.Sequential([layer_fn()])
        m(np.zeros((1, 3, 3, 1), "float32"))
        return m

    return make


def seq_with_input(layer_fn):
    return lambda: keras.Sequential([keras.Input((3, 3, 1)), layer_fn()])


def functional(layer_fn):
    def make():
        x = keras.Input((3, 3, 1))
        return keras.Model(x, layer_fn()(x))

    return make


def nested(layer_fn):
    def make():
        inner = keras.Sequential([keras.Input((3, 3, 1)), layer_fn()])
        x = keras.Input((None, None, 1))
        try:
            return keras.Model(x, inner(x))
        except Exception as error:  # noqa: BLE001
            print(f"refused   nested build: {type(error).__name__}: {str(error).splitlines()[0][:150]}")
            raise

    return make


for name, fn, nonlinear in (("stock Conv2D", stock_conv, False), ("CPLConv2D", cpl_conv, True)):
    run(f"{name} / Sequential without Input", seq_no_input(fn), nonlinear)
    run(f"{name} / Sequential with Input", seq_with_input(fn), nonlinear)
    run(f"{name} / functional", functional(fn), nonlinear)
    try:
        run(f"{name} / nested in a None-size model", nested(fn), nonlinear)
    except Exception:  # noqa: BLE001
        pass
