"""The contract every registered layer of the library keeps (like Keras's `run_layer_test`).

For every class registered under "deel_lip_ext>" that is a Keras layer: its config
round-trips, a `.keras` file loads back in safe mode with identical outputs, the
plain-Keras export computes the same function, the inference output follows an
optimizer step (no stale cache), `compute_output_shape` is the real shape, and it
builds, runs and exports under mixed precision. A new layer gets these tests by
adding one line to `CASES` (the registry test fails until it does).
"""

import keras
import numpy as np
import pytest
from _backend import parameter_gradients

import deel_lip_ext
from deel_lip_ext import layers as lip
from deel_lip_ext.model import vanilla_model
from deel_lip_ext.zoo import NearestUpSampling2D

# class name -> (factory of a fresh layer, input shape without the batch axis). Tiny shapes: fast.
CASES = {
    "SpectralDense": (lambda: lip.SpectralDense(3, activation="relu"), (4,)),
    "FrobeniusDense": (lambda: lip.FrobeniusDense(3, disjoint_neurons=False), (4,)),
    "BjorckDense": (lambda: lip.BjorckDense(3), (4,)),
    "AOLDense": (lambda: lip.AOLDense(3), (4,)),
    "ChordDense": (lambda: lip.ChordDense(3), (4,)),
    "SLLDense": (lambda: lip.SLLDense(5), (4,)),
    "CPLDense": (lambda: lip.CPLDense(5), (4,)),
    "SpectralConv2D": (lambda: lip.SpectralConv2D(2, 3, padding="circular"), (5, 5, 2)),
    "FrobeniusConv2D": (lambda: lip.FrobeniusConv2D(2, 3, strides=2), (5, 5, 1)),
    "BCOPConv2D": (lambda: lip.BCOPConv2D(4, 2, strides=2), (4, 4, 2)),
    "RKOConv2D": (lambda: lip.RKOConv2D(2, 3), (5, 5, 2)),
    "OSSNConv2D": (lambda: lip.OSSNConv2D(2, 3, padding="same"), (5, 5, 2)),
    "SVCMConv2D": (lambda: lip.SVCMConv2D(2, 3), (5, 5, 2)),
    "AOCConv2D": (lambda: lip.AOCConv2D(4, 3, strides=2), (4, 4, 2)),
    "AOCConv2DTranspose": (lambda: lip.AOCConv2DTranspose(2, 3, strides=2), (3, 3, 2)),
    "AOLConv2D": (lambda: lip.AOLConv2D(2, 3, padding="valid"), (5, 5, 2)),
    "PadConv2D": (lambda: lip.PadConv2D(2, 3, padding="reflect"), (5, 5, 2)),
    "SpectralConv2DTranspose": (lambda: lip.SpectralConv2DTranspose(2, 3, strides=2), (3, 3, 2)),
    "SpectralConv1D": (lambda: lip.SpectralConv1D(2, 3), (6, 2)),
    "LiResNetBlock": (lambda: lip.LiResNetBlock(3, padding="circular"), (5, 5, 2)),
    "SLLConv2D": (lambda: lip.SLLConv2D(3, 3, padding="circular"), (5, 5, 2)),
    "CPLConv2D": (lambda: lip.CPLConv2D(3, 3), (5, 5, 2)),
    "LipResidual": (lambda: lip.LipResidual(lip.SpectralDense(4)), (4,)),
    "LayerCentering": (lambda: lip.LayerCentering(), (4, 4, 2)),
    "BatchCentering": (lambda: lip.BatchCentering(), (4,)),
    "GroupSort": (lambda: lip.GroupSort(n=2, k_coef_lip=2.0), (4,)),
    "GroupSort2": (lambda: lip.GroupSort2(), (4,)),
    "FullSort": (lambda: lip.FullSort(), (4,)),
    "MaxMin": (lambda: lip.MaxMin(), (4,)),
    "MaxMinHalves": (lambda: lip.MaxMinHalves(), (4,)),
    "CReLU": (lambda: lip.CReLU(), (4,)),
    "Householder": (lambda: lip.Householder(), (4,)),
    "ScaledAveragePooling2D": (lambda: lip.ScaledAveragePooling2D(), (4, 4, 2)),
    "ScaledL2NormPooling2D": (lambda: lip.ScaledL2NormPooling2D(), (4, 4, 2)),
    "GroupSort2L2NormPooling2D": (lambda: lip.GroupSort2L2NormPooling2D(sort_k_coef_lip=0.5), (4, 4, 2)),
    "ConvGroupSort2Conv2D": (
        lambda: lip.ConvGroupSort2Conv2D(
            {"filters": 4, "kernel_size": 3, "padding": "same"},
            {"filters": 4, "kernel_size": 3, "padding": "same"},
            sort_k_coef_lip=0.5,
            pooling=lip.GroupSort2L2NormPooling2D().get_config(),
        ),
        (6, 6, 2),
    ),
    "DenseGroupSort2Dense": (lambda: lip.DenseGroupSort2Dense({"units": 4}, {"units": 3}, 0.5), (5,)),
    "ScaledGlobalAveragePooling2D": (lambda: lip.ScaledGlobalAveragePooling2D(), (4, 4, 2)),
    "ScaledGlobalL2NormPooling2D": (lambda: lip.ScaledGlobalL2NormPooling2D(), (4, 4, 2)),
    "InvertibleDownSampling": (lambda: lip.InvertibleDownSampling(2), (4, 4, 2)),
    "InvertibleUpSampling": (lambda: lip.InvertibleUpSampling(2), (2, 2, 8)),
    "CircularPadding2D": (lambda: lip.CircularPadding2D(1), (4, 4, 2)),
    "Padding2D": (lambda: lip.Padding2D(1, mode="reflect"), (4, 4, 2)),
    "LInfDistDense": (lambda: lip.LInfDistDense(4), (3,)),
    "LInfDistConv2D": (lambda: lip.LInfDistConv2D(3, 3, padding="same"), (4, 4, 2)),
    "LogitScale": (lambda: lip.LogitScale(), (4,)),
    "NearestUpSampling2D": (lambda: NearestUpSampling2D(2), (2, 2, 2)),
}


def _registered_layer_classes():
    classes = {
        obj
        for name, obj in keras.saving.get_custom_objects().items()
        if name.startswith("deel_lip_ext>") and isinstance(obj, type) and issubclass(obj, keras.layers.Layer)
    }
    return sorted((cls for cls in classes if not issubclass(cls, keras.Model)), key=lambda cls: cls.__name__)


def test_every_registered_layer_has_a_contract_case():
    assert deel_lip_ext.layers  # every submodule imported: the registry is complete
    names = {cls.__name__ for cls in _registered_layer_classes()}
    assert len(names) >= 44
    missing = sorted(names - set(CASES))
    assert not missing, f"registered layers without a case in tests/test_layer_contract.py: {missing}"
    for name, (factory, _) in CASES.items():
        assert type(factory()).__name__ == name


def _inputs(shape, seed=0, batch=2):
    return np.random.default_rng(seed).normal(size=(batch, *shape)).astype("float32")


def _model(name):
    factory, shape = CASES[name]
    layer = factory()
    model = keras.Sequential([keras.Input(shape), layer])
    return model, layer, shape


def _numpy(tensor):
    return np.asarray(keras.ops.convert_to_numpy(tensor))


@pytest.mark.parametrize("name", sorted(CASES))
def test_config_round_trip_and_output_shape(name):
    model, layer, shape = _model(name)
    x = _inputs(shape)
    y = _numpy(model(x))
    # compute_output_shape is the real shape, with and without a known batch size.
    assert tuple(layer.compute_output_shape((2, *shape))) == y.shape
    assert tuple(layer.compute_output_shape((None, *shape)))[1:] == y.shape[1:]
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    clone_model = keras.Sequential([keras.Input(shape), clone])
    clone_model.set_weights(model.get_weights())
    np.testing.assert_array_equal(_numpy(clone_model(x)), y)


@pytest.mark.parametrize("name", sorted(CASES))
def test_keras_file_loads_in_safe_mode_with_identical_outputs(name, tmp_path):
    model, _, shape = _model(name)
    x = _inputs(shape, seed=1)
    y = _numpy(model(x))
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded.layers[-1]).__name__ == name
    np.testing.assert_array_equal(_numpy(loaded(x)), y)


@pytest.mark.parametrize("name", sorted(CASES))
def test_export_computes_the_same_function(name):
    model, _, shape = _model(name)
    x = _inputs(shape, seed=2)
    np.testing.assert_allclose(_numpy(vanilla_model(model)(x)), _numpy(model(x)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_inference_follows_an_optimizer_step(name):
    """After one training step the inference output is that of a fresh copy of the new weights (no stale cache)."""
    model, layer, shape = _model(name)
    x = _inputs(shape, seed=3)
    model(x)  # fills the inference cache before the step
    optimizer = keras.optimizers.SGD(0.1)
    variables = model.trainable_variables

    def squared_sum():
        return keras.ops.sum(keras.ops.square(model(x, training=True))), None

    _, _, gradients = parameter_gradients(squared_sum, variables)
    pairs = [(g, v) for g, v in zip(gradients, variables) if g is not None]
    if pairs:
        optimizer.apply_gradients(pairs)
    fresh = keras.Sequential([keras.Input(shape), type(layer).from_config(layer.get_config())])
    fresh.set_weights(model.get_weights())
    np.testing.assert_allclose(_numpy(model(x)), _numpy(fresh(x)), atol=1e-6, rtol=1e-6)


TOLERANCES = {"mixed_float16": 1e-2, "mixed_bfloat16": 8e-2}
# Each layer under one policy in the fast suite (alternating along the sorted names), the other with the slow tests.
MIXED_PRECISION_GRID = [
    pytest.param(name, policy, tolerance, marks=[pytest.mark.slow] if (index + column) % 2 else [])
    for index, name in enumerate(sorted(CASES))
    for column, (policy, tolerance) in enumerate(TOLERANCES.items())
]


@pytest.mark.parametrize("name, policy, tolerance", MIXED_PRECISION_GRID)
def test_mixed_precision_build_call_export(name, policy, tolerance):
    factory, shape = CASES[name]
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = keras.Sequential([keras.Input(shape), factory()])
        x = _inputs(shape, seed=4)
        y = _numpy(model(x)).astype("float32")
        exported = _numpy(vanilla_model(model)(x)).astype("float32")
    finally:
        keras.config.set_dtype_policy(previous)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(exported, y, atol=tolerance, rtol=tolerance)
