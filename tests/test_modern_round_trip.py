"""Issue-15 layers: `.keras` and SavedModel round trips keep the outputs and the certified bound."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deel_lip_ext import layers as lip
from deel_lip_ext.model import vanilla_model
from deel_lip_ext.utils import model_lipschitz_bound

CASES = [
    ("AOLDense", (6,), lambda: lip.AOLDense(4)),
    ("AOLConv2D", (6, 6, 2), lambda: lip.AOLConv2D(3, 3, padding="circular")),
    ("SLLDense", (6,), lambda: lip.SLLDense(8)),
    ("SLLConv2D", (6, 6, 2), lambda: lip.SLLConv2D(4, 3, padding="circular")),
    ("CPLDense", (6,), lambda: lip.CPLDense(8)),
    ("CPLConv2D", (6, 6, 2), lambda: lip.CPLConv2D(4, 3)),
    ("AOCConv2D", (6, 6, 2), lambda: lip.AOCConv2D(4, 3, strides=2)),
    ("AOCConv2DTranspose", (3, 3, 2), lambda: lip.AOCConv2DTranspose(4, 3, strides=2)),
    ("LiResNetBlock", (6, 6, 2), lambda: lip.LiResNetBlock(3, padding="circular", k_coef_lip=2.0)),
    ("ChordDense", (6,), lambda: lip.ChordDense(4, k_coef_lip=0.5)),
    ("LipResidual", (6,), lambda: lip.LipResidual(lip.SpectralDense(6), alpha_initializer=0.3)),
    ("LayerCentering", (4, 4, 2), lambda: lip.LayerCentering()),
    ("BatchCentering", (6,), lambda: lip.BatchCentering()),
]


@pytest.mark.parametrize("name, shape, make", CASES, ids=[case[0] for case in CASES])
def test_keras_and_saved_model_round_trips_keep_outputs_and_bound(name, shape, make, tmp_path):
    model = keras.Sequential([keras.Input(shape), make()])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, *shape)).astype("float32")
    for weight in model.trainable_weights:  # away from the initializers, as after training
        weight.assign(weight + 0.1 * rng.normal(size=weight.shape).astype("float32"))
    model(x, training=True)  # moves the layers' state (running means, power-iteration vectors)
    reference = model.predict(x, verbose=0)
    bound = model_lipschitz_bound(model)

    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert type(loaded.layers[0]) is type(model.layers[0])
    np.testing.assert_allclose(loaded.predict(x, verbose=0), reference, atol=1e-6)
    assert model_lipschitz_bound(loaded) == pytest.approx(bound, rel=1e-6)

    # SavedModel of the stock export (what gets deployed), reloaded without the library's classes.
    exported = vanilla_model(model)
    exported.export(str(tmp_path / "saved"), format="tf_saved_model", verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(reloaded.serve(x).numpy(), reference, atol=1e-5)
