"""Inference cache freshness for every parametrized layer: fill the cache with a compiled predict, change the raw
state (set_weights, assign, load_weights), predict again with the SAME compiled function and compare with the
fresh export (effective_kernel) and the bound with the exact norm of what runs. tests/test_kernel_freshness.py
covers SpectralDense/SpectralConv2D/FrobeniusConv2D only."""

import tempfile

import harness  # noqa: F401
import keras
import numpy as np

from deel_lip_ext import layers as lip
from deel_lip_ext.model import vanilla_model
from deel_lip_ext.utils import model_lipschitz_bound
from harness import affine_matrix, l2_norm

CASES = [
    ("SpectralDense", (5,), lambda: lip.SpectralDense(4)),
    ("FrobeniusDense", (5,), lambda: lip.FrobeniusDense(4)),
    ("BjorckDense", (5,), lambda: lip.BjorckDense(4)),
    ("AOLDense", (5,), lambda: lip.AOLDense(4)),
    ("ChordDense", (5,), lambda: lip.ChordDense(4)),
    ("AOLConv2D", (5, 5, 2), lambda: lip.AOLConv2D(3, 3)),
    ("AOCConv2D", (4, 4, 2), lambda: lip.AOCConv2D(3, 3, strides=2)),
    ("AOCConv2DTranspose", (3, 3, 2), lambda: lip.AOCConv2DTranspose(3, 3, strides=2)),
    ("BCOPConv2D", (4, 4, 2), lambda: lip.BCOPConv2D(3, 2)),
    ("RKOConv2D", (4, 4, 2), lambda: lip.RKOConv2D(3, 3)),
    ("OSSNConv2D", (4, 4, 2), lambda: lip.OSSNConv2D(3, 3)),
    ("SVCMConv2D", (4, 4, 2), lambda: lip.SVCMConv2D(3, 3)),
    ("PadConv2D", (4, 4, 2), lambda: lip.PadConv2D(3, 3, padding="reflect")),
    ("SpectralConv2DTranspose", (3, 3, 2), lambda: lip.SpectralConv2DTranspose(3, 3, strides=2)),
    ("SpectralConv1D", (6, 2), lambda: lip.SpectralConv1D(3, 3)),
    ("LiResNetBlock", (4, 4, 2), lambda: lip.LiResNetBlock(3)),
]


def run(name, shape, make, how):
    model = keras.Sequential([keras.Input(shape), make()])
    layer = model.layers[0]
    x = np.random.default_rng(0).normal(size=(4, *shape)).astype("float32")
    model.predict(x, verbose=0)  # compiled predict fills the cache
    rng = np.random.default_rng(1)
    new = [rng.normal(size=w.shape).astype(w.dtype) * 0.7 for w in layer.get_weights()]
    if how == "set_weights":
        layer.set_weights(new)
    elif how == "assign":
        for variable, value in zip(layer.weights, new):
            variable.assign(value)
    else:
        other = keras.Sequential([keras.Input(shape), make()])
        other.layers[0].set_weights(new)
        with tempfile.TemporaryDirectory() as tmp:
            other.save_weights(f"{tmp}/w.weights.h5")
            model.load_weights(f"{tmp}/w.weights.h5")
    got = model.predict(x, verbose=0)
    fresh = vanilla_model(model).predict(x, verbose=0)
    diff = float(np.abs(got - fresh).max())
    runs = l2_norm(affine_matrix(lambda z: model.predict(z, verbose=0), shape))
    bound = model_lipschitz_bound(model)
    flag = "STALE" if diff > 1e-4 else ("VIOLATION" if runs > bound * (1 + 1e-5) else "ok")
    print(
        f"{flag:9s} {name} after {how}: |predict - fresh export| {diff:.2e}, bound {bound:.5f}, runs {runs:.5f}",
        flush=True,
    )


for name, shape, make in CASES:
    for how in ("set_weights", "assign", "load_weights"):
        try:
            run(name, shape, make, how)
        except Exception as error:  # noqa: BLE001
            print(f"CRASH     {name} {how}: {type(error).__name__}: {str(error).splitlines()[0][:150]}")
        keras.backend.clear_session(free_memory=False)
