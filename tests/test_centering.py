"""LayerCentering and BatchCentering: 1-Lipschitz mean removal, running mean, export parity, round trips."""

import keras
import numpy as np
import pytest

from deel_lip_ext.layers import BatchCentering, LayerCentering
from deel_lip_ext.utils import model_lipschitz_bound
from lipschitz_fuzz import jacobian_norm, jacobians


def test_layer_centering_is_the_spatial_mean_removal_and_a_projection():
    shape = (4, 5, 3)
    model = keras.Sequential([keras.Input(shape), LayerCentering()])
    x = np.random.default_rng(0).normal(size=(3,) + shape).astype("float32")
    expected = x - x.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)), expected, atol=1e-6)
    jac = jacobians(model, x)
    values = np.linalg.svd(jac, compute_uv=False)
    # An orthogonal projection: singular values 0 (one per channel) or 1.
    assert np.all(np.minimum(np.abs(values), np.abs(values - 1)) < 1e-5)
    assert model_lipschitz_bound(model) == 1.0 and jacobian_norm(jac, "l2") <= 1 + 1e-5
    assert jacobian_norm(jac, "linf") <= model_lipschitz_bound(model, "linf") * (1 + 1e-6)
    with pytest.raises(ValueError, match="spatial axes"):
        LayerCentering()(np.zeros((2, 3), "float32"))


def test_batch_centering_running_mean_inference_and_export(tmp_path):
    shape = (4, 4, 3)
    layer = BatchCentering(momentum=0.1)
    model = keras.Sequential([keras.Input(shape), layer])
    rng = np.random.default_rng(1)
    running = np.zeros(3)
    for _ in range(4):
        x = (rng.normal(size=(5,) + shape) + [1.0, -2.0, 0.5]).astype("float32")
        out = keras.ops.convert_to_numpy(model(x, training=True))
        np.testing.assert_allclose(out, x - x.mean(axis=(0, 1, 2)), atol=1e-5)
        running = 0.9 * running + 0.1 * x.mean(axis=(0, 1, 2))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_mean), running, atol=1e-5)
    x = rng.normal(size=(2,) + shape).astype("float32")
    inference = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(inference, x - running, atol=1e-5)
    (dense,) = layer.vanilla_export()
    assert type(dense) is keras.layers.Dense
    np.testing.assert_allclose(keras.ops.convert_to_numpy(dense(x)), inference, atol=1e-5)
    assert model_lipschitz_bound(model) == 1.0 and model_lipschitz_bound(model, "linf") == 1.0
    path = tmp_path / "centering.keras"
    keras.Sequential([keras.Input(shape), layer, LayerCentering()]).save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.layers[0].momentum == 0.1
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded.layers[0].moving_mean), running, atol=1e-6)
    with pytest.raises(ValueError, match="momentum"):
        BatchCentering(momentum=0.0)
