"""The small LiResNet: structure on MNIST/CIFAR sizes, training with EMMA, certified bound, export."""

import keras
import numpy as np
import pytest

from deel_lip_ext import layers as lip
from deel_lip_ext import losses, zoo
from deel_lip_ext.model import vanilla_model
from deel_lip_ext.utils import model_lipschitz_bound
from lipschitz_fuzz import jacobian_norm, jacobians


@pytest.mark.parametrize("shape,flat", [((28, 28, 1), 7 * 7 * 8), ((32, 32, 3), 8 * 8 * 8)])
def test_structure(shape, flat):
    model = zoo.liresnet(shape, num_classes=10, width=4, depth=3, neck_filters=8, dense_width=16)
    blocks = [layer for layer in model.layers if isinstance(layer, lip.LiResNetBlock)]
    assert len(blocks) == 3 and all(block.output.shape[1:] == shape[:2] + (4,) for block in blocks)
    assert model.get_layer("flatten").output.shape[1:] == (flat,)
    assert [layer.units for layer in model.layers if isinstance(layer, lip.ChordDense)] == [16, 10]
    with pytest.raises(ValueError, match="divisible by 4"):
        zoo.liresnet((30, 30, 1))
    with pytest.raises(ValueError, match="width"):
        zoo.liresnet(width=5)


def test_trains_with_emma_and_its_bound_covers_the_jacobian_and_the_export():
    model = zoo.liresnet((12, 12, 1), num_classes=4, width=4, depth=2, neck_filters=4, dense_width=8)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(16, 12, 12, 1)).astype("float32")
    y = np.eye(4, dtype="float32")[np.arange(16) % 4]
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=losses.EMMA(0.1))
    history = model.fit(x, y, epochs=15, batch_size=8, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    bound = model_lipschitz_bound(model)
    assert jacobian_norm(jacobians(model, x[:2]), "l2") <= bound * (1 + 1e-5)
    exported = vanilla_model(model)
    np.testing.assert_allclose(exported(x), model(x), atol=1e-5)
    assert model_lipschitz_bound(exported) <= bound * (1 + 1e-5)
    before = keras.ops.convert_to_numpy(model(x))
    model.condense()  # CHORD and spectral kernels written back, the blocks left as they are
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)), before, atol=1e-4)
