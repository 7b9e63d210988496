"""Sequential/Model, `vanilla_export()` parity, SavedModel export and `.keras` round trips."""

import warnings

import keras
import numpy as np
import pytest

from deel_lip_ext import layers as lip
from deel_lip_ext.model import Model, Sequential, vanilla_model
from deel_lip_ext.utils import model_lipschitz_bound

PARAMETRIZED = (lip.SpectralDense, lip.FrobeniusDense, lip.SpectralConv2D, lip.FrobeniusConv2D)
STOCK_FOR_PARAMETRIZED = (keras.layers.Dense, keras.layers.Conv2D)


def _conv_net(k_coef_lip=1.0):
    return Sequential(
        [
            keras.Input((8, 8, 2)),
            lip.SpectralConv2D(8, 3, padding="circular", name="conv_circ"),
            lip.GroupSort2(),
            lip.SpectralConv2D(8, 3, strides=2, padding="same", name="conv_same"),
            lip.MaxMinHalves(),
            lip.ScaledL2NormPooling2D(),
            lip.FrobeniusConv2D(4, 1, padding="valid", name="conv_valid"),
            keras.layers.Flatten(),
            lip.SpectralDense(6, name="dense"),
            lip.GroupSort(n=3),
            lip.FrobeniusDense(3, disjoint_neurons=False, name="head"),
        ],
        k_coef_lip=k_coef_lip,
    )


def _branchy_net():
    inputs = keras.Input((6, 6, 2))
    a = lip.SpectralConv2D(4, 3, padding="circular", name="branch_a")(inputs)
    b = lip.FrobeniusConv2D(4, 1, name="branch_b")(inputs)
    h = keras.layers.Add(name="add")([a, b])
    h = lip.GroupSort2()(h)
    c = lip.InvertibleDownSampling(2)(h)
    h = keras.layers.Flatten()(c)
    return Model(inputs, lip.SpectralDense(3, name="out")(h))


def _fit_briefly(model, steps=3):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(16,) + tuple(model.inputs[0].shape[1:])).astype("float32")
    y = rng.normal(size=(16,) + tuple(model.outputs[0].shape[1:])).astype("float32")
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    model.fit(x, y, epochs=steps, batch_size=16, verbose=0)
    return x


@pytest.mark.parametrize("build", [_conv_net, _branchy_net])
def test_vanilla_export_matches_and_is_plain(build, tmp_path):
    model = build()
    x = _fit_briefly(model)
    reference = model.predict(x, verbose=0)
    exported = model.vanilla_export()
    np.testing.assert_allclose(exported.predict(x, verbose=0), reference, atol=1e-5)

    original_names = {layer.name for layer in model.layers if isinstance(layer, PARAMETRIZED)}
    for layer in exported.layers:
        assert not isinstance(layer, PARAMETRIZED)
        if layer.name in original_names:
            assert type(layer) in STOCK_FOR_PARAMETRIZED
    assert original_names <= {layer.name for layer in exported.layers}
    assert type(exported) in (keras.Sequential, keras.Model) or type(exported).__module__.startswith("keras")

    exported.export(str(tmp_path / "saved"), format="tf_saved_model", verbose=False)
    tf = pytest.importorskip("tensorflow")  # reloads the SavedModel
    reloaded = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(reloaded.serve(x).numpy(), reference, atol=1e-5)


def test_export_is_independent_of_later_training():
    model = _conv_net()
    x = _fit_briefly(model)
    exported = vanilla_model(model)
    frozen = exported.predict(x, verbose=0)
    _fit_briefly(model, steps=2)
    assert np.abs(model.predict(x, verbose=0) - frozen).max() > 1e-4
    np.testing.assert_array_equal(exported.predict(x, verbose=0), frozen)


def test_vanilla_model_on_plain_keras_model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu"), keras.layers.Dense(2)])
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    np.testing.assert_allclose(vanilla_model(model).predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_functional_export_keeps_keras_ops_calls():
    # `keras.ops` calls of a functional model are operations, not layers (no weights): the export
    # copies them as they are (it raised AttributeError on `Tanh.weights` before).
    inputs = keras.Input((8, 8, 1))
    h = lip.SpectralConv2D(4, 3, padding="same")(inputs)
    h = lip.ScaledL2NormPooling2D()(lip.GroupSort2()(h))
    h = keras.ops.reshape(h, (-1, 4 * 4 * 4))
    h = keras.ops.tanh(lip.SpectralDense(6)(h))
    outputs = lip.SpectralDense(3)(keras.ops.relu(h) / 2.0)
    model = Model(inputs, outputs)
    x = _fit_briefly(model)
    exported = vanilla_model(model)
    np.testing.assert_allclose(exported.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    kinds = {type(operation).__name__ for operation in exported.operations}
    assert {"Reshape", "Tanh", "Relu", "TrueDivide", "GroupSort2L2NormPooling2D"} <= kinds
    assert not any(isinstance(operation, PARAMETRIZED) for operation in exported.operations)
    assert model_lipschitz_bound(exported) == pytest.approx(model_lipschitz_bound(model), rel=1e-3)


class _Tripled(keras.layers.Layer):
    """A layer class that is not registered with Keras."""

    def call(self, inputs):
        return 3.0 * inputs


def test_export_copies_lambda_layers_and_unregistered_layers_and_refuses_lambda_activations():
    inputs = keras.Input((4,))
    h = keras.layers.Lambda(lambda t: 2.0 * t, name="doubled")(lip.SpectralDense(3)(inputs))
    model = Model(inputs, _Tripled(name="tripled")(h))
    x = _fit_briefly(model)
    exported = vanilla_model(model)
    np.testing.assert_allclose(exported.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    copies = {layer.name: layer for layer in exported.layers}
    assert isinstance(copies["tripled"], _Tripled) and copies["tripled"] is not model.get_layer("tripled")
    assert isinstance(copies["doubled"], keras.layers.Lambda)

    steep = Model(inputs, keras.layers.Activation(lambda t: 3.0 * keras.ops.relu(t), name="steep")(inputs))
    with pytest.raises(ValueError, match=r"cannot copy layer 'steep'.*register_keras_serializable"):
        vanilla_model(steep)


class _LouderDense(lip.SpectralDense):
    """A library layer subclass whose `call` is not the library's: its export must not be the library's."""

    def call(self, inputs, training=None):
        return 10.0 * super().call(inputs, training=training)


class _LouderDenseWithExport(_LouderDense):
    def vanilla_export(self):
        return [*super().vanilla_export(), keras.layers.Rescaling(10.0)]


class _ScaledModel(keras.Model):
    def call(self, inputs, training=None, mask=None):
        return 10.0 * super().call(inputs, training=training, mask=mask)


def test_export_refuses_call_overrides_it_would_not_reproduce():
    inputs = keras.Input((4,))
    with pytest.raises(ValueError, match=r"layer 'louder' \(_LouderDense\) overrides `call`.*vanilla_export"):
        vanilla_model(keras.Model(inputs, _LouderDense(3, name="louder")(inputs)))
    with pytest.raises(ValueError, match=r"model 'scaled' \(_ScaledModel\) overrides `call`"):
        vanilla_model(_ScaledModel(inputs, lip.SpectralDense(3)(inputs), name="scaled"))
    # A subclass that exports its own `call` is exported as it says.
    model = keras.Model(inputs, _LouderDenseWithExport(3)(inputs))
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    np.testing.assert_allclose(vanilla_model(model).predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_global_k_is_split_and_bounds_the_model():
    model = _conv_net(k_coef_lip=4.0)
    lipschitz_layers = [layer for layer in model.layers if isinstance(layer, lip.LipschitzLayer)]
    share = 4.0 ** (1 / len(lipschitz_layers))
    assert all(layer.k_coef_lip == pytest.approx(share) for layer in lipschitz_layers)
    _fit_briefly(model)
    assert model_lipschitz_bound(model.vanilla_export()) <= 4.0 * (1 + 1e-3)


def test_sequential_warns_for_unknown_layers():
    with pytest.warns(UserWarning, match="not known to be 1-Lipschitz"):
        Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Sequential([keras.Input((4,)), lip.SpectralDense(3), keras.layers.ReLU(), keras.layers.Flatten()])


@pytest.mark.parametrize("build", [_conv_net, _branchy_net])
def test_keras_round_trip_and_identical_continued_training(build, tmp_path):
    model = build()
    x = _fit_briefly(model)
    y = np.random.default_rng(9).normal(size=(16,) + tuple(model.outputs[0].shape[1:])).astype("float32")
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert type(loaded) is type(model)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    for _ in range(2):
        model.train_on_batch(x, y)
        loaded.train_on_batch(x, y)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    for original, restored in zip(model.weights, loaded.weights):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(restored), keras.ops.convert_to_numpy(original), atol=1e-5
        )


def test_condense_on_model_keeps_outputs():
    model = _conv_net()
    x = _fit_briefly(model)
    before = model.predict(x, verbose=0)
    model.condense()
    np.testing.assert_allclose(model.predict(x, verbose=0), before, atol=1e-4)


def test_export_unbuilt_model_errors():
    with pytest.raises(ValueError, match="built"):
        vanilla_model(keras.Sequential([lip.SpectralDense(3)]))
