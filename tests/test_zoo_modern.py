"""The AOL / SLL zoo networks: shapes, certified 1-Lipschitz after training, export parity."""

import warnings

import keras
import numpy as np
import pytest

from deel_lip_ext.utils import model_lipschitz_bound
from deel_lip_ext.zoo import aol_net, sll_net


@pytest.mark.parametrize("builder", [aol_net, sll_net])
@pytest.mark.parametrize("input_shape", [(28, 28, 1), pytest.param((32, 32, 3), marks=pytest.mark.slow)])
def test_modern_zoo_net_is_certified_and_exports(builder, input_shape):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every layer must be known 1-Lipschitz
        model = builder(input_shape, num_classes=10, width=4, depth=1)
    assert model.output_shape == (None, 10)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(8, *input_shape)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(10, size=8), 10)
    model.compile(keras.optimizers.Adam(1e-2), "categorical_crossentropy")
    model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    bound = model_lipschitz_bound(model)
    assert bound <= 1 + 1e-4
    # Many pairs: the measured ratio never exceeds the certified bound.
    a, b = x[:4], x[4:]
    ratio = np.linalg.norm((model(a) - model(b)).numpy().reshape(4, -1), axis=1) / np.linalg.norm(
        (a - b).reshape(4, -1), axis=1
    )
    assert ratio.max() <= bound
    np.testing.assert_allclose(model.vanilla_export()(x), model(x), atol=1e-5)


def test_modern_zoo_refuses_bad_arguments():
    with pytest.raises(ValueError, match="width"):
        sll_net(width=0)
    with pytest.raises(ValueError, match="input_shape"):
        aol_net(input_shape=(28, 28))
