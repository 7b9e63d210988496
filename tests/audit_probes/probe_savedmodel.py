"""SavedModel (model.export, format tf_saved_model) round trip of the vanilla export of each issue-15 layer
(issue 15 "What must be true": SavedModel + .keras round trips for each layer; no test exercises SavedModel for
these layers). Prints ok / FAIL with the max output difference."""

import tempfile

import harness  # noqa: F401
import keras
import numpy as np
import tensorflow as tf

from deel_lip_ext import layers as lip
from deel_lip_ext.model import vanilla_model

CASES = [
    ("AOLDense", (6,), lambda: lip.AOLDense(4)),
    ("AOLConv2D", (6, 6, 2), lambda: lip.AOLConv2D(3, 3, padding="circular")),
    ("SLLDense", (6,), lambda: lip.SLLDense(8)),
    ("SLLConv2D", (6, 6, 2), lambda: lip.SLLConv2D(4, 3, padding="circular")),
    ("CPLDense", (6,), lambda: lip.CPLDense(8)),
    ("CPLConv2D", (6, 6, 2), lambda: lip.CPLConv2D(4, 3)),
    ("AOCConv2D", (6, 6, 2), lambda: lip.AOCConv2D(4, 3, strides=2)),
    ("AOCConv2DTranspose", (3, 3, 2), lambda: lip.AOCConv2DTranspose(4, 3, strides=2)),
    ("LiResNetBlock", (6, 6, 2), lambda: lip.LiResNetBlock(3, padding="circular")),
    ("ChordDense", (6,), lambda: lip.ChordDense(4)),
    ("LipResidual", (6,), lambda: lip.LipResidual(lip.SpectralDense(6))),
    ("LayerCentering", (4, 4, 2), lambda: lip.LayerCentering()),
    ("BatchCentering", (6,), lambda: lip.BatchCentering()),
]

for name, shape, make in CASES:
    try:
        model = keras.Sequential([keras.Input(shape), make()])
        x = np.random.default_rng(0).normal(size=(3, *shape)).astype("float32")
        model(x, training=True)
        ref = model.predict(x, verbose=0)
        exported = vanilla_model(model)
        with tempfile.TemporaryDirectory() as tmp:
            exported.export(tmp, format="tf_saved_model", verbose=False)
            reloaded = tf.saved_model.load(tmp)
            out = reloaded.serve(x).numpy()
        diff = float(np.abs(out - ref).max())
        print(f"{'ok' if diff <= 1e-5 else 'FAIL':4s} {name}: max diff {diff:.2e}", flush=True)
    except Exception as error:  # noqa: BLE001
        print(f"FAIL {name}: {type(error).__name__}: {str(error).splitlines()[0][:200]}", flush=True)
    keras.backend.clear_session(free_memory=False)
