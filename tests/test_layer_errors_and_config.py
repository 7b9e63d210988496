"""Bad arguments name themselves; every parametrized layer round-trips its config."""

import keras
import numpy as np
import pytest

from deel_lip_ext.constraints import (
    AutoWeightClipConstraint,
    FrobeniusConstraint,
    SpectralConstraint,
    WeightClipConstraint,
)
from deel_lip_ext.initializers import SpectralInitializer
from deel_lip_ext.layers import FrobeniusConv2D, FrobeniusDense, SpectralConv2D, SpectralDense

BAD_ARGUMENTS = [
    (lambda: SpectralDense(4, k_coef_lip=0), "k_coef_lip"),
    (lambda: SpectralDense(4, k_coef_lip=-1.0), "k_coef_lip"),
    (lambda: FrobeniusDense(4, k_coef_lip=float("inf")), "k_coef_lip"),
    (lambda: SpectralConv2D(4, 3, k_coef_lip="1"), "k_coef_lip"),
    (lambda: SpectralDense(0), "units"),
    (lambda: SpectralConv2D(0, 3), "filters"),
    (lambda: SpectralConv2D(4, 0), "kernel_size"),
    (lambda: SpectralConv2D(4, 3, strides=(1, 0)), "strides"),
    (lambda: SpectralConv2D(4, 3, padding="reflect"), "padding"),
    (lambda: FrobeniusConv2D(4, 3, padding="zeros"), "padding"),
    (lambda: SpectralConv2D(4, 3, dilation_rate=2), "dilation_rate"),
    (lambda: SpectralConv2D(4, 3, groups=2), "groups"),
    (lambda: SpectralConv2D(4, 3, data_format="channels_first"), "data_format"),
    (lambda: SpectralDense(4, beta_bjorck=1.0), "beta_bjorck"),
    (lambda: SpectralDense(4, maxiter_bjorck=0), "maxiter_bjorck"),
    (lambda: SpectralConv2D(4, 3, eps_spectral=-1), "eps_spectral"),
    (lambda: SpectralConstraint(k_coef_lip=0), "k_coef_lip"),
    (lambda: SpectralInitializer(beta_bjorck=2), "beta_bjorck"),
    (lambda: WeightClipConstraint(c=-1), "c"),
    (lambda: AutoWeightClipConstraint(scale=0), "scale"),
]


@pytest.mark.parametrize("make, name", BAD_ARGUMENTS)
def test_bad_arguments_raise_naming_the_argument(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_frobenius_dense_disjoint_neurons_must_be_bool():
    with pytest.raises(TypeError, match="disjoint_neurons"):
        FrobeniusDense(3, disjoint_neurons="yes")


def test_build_time_errors():
    with pytest.raises(ValueError, match="circular"):
        SpectralConv2D(4, 3, padding="circular").build((None, None, None, 3))
    with pytest.raises(ValueError, match="valid"):
        SpectralConv2D(4, 5, padding="valid").build((None, 3, 3, 1))
    with pytest.raises(ValueError, match="too large"):
        SpectralConv2D(4, 7, padding="circular").build((None, 2, 2, 1))


@pytest.mark.parametrize(
    "layer, input_shape",
    [
        (SpectralDense(5, k_coef_lip=2.0, eps_bjorck=None, activation="relu", use_bias=False), (7,)),
        (FrobeniusDense(3, disjoint_neurons=False, k_coef_lip=0.5), (7,)),
        (SpectralConv2D(4, (3, 1), strides=(2, 1), padding="circular", eps_bjorck=0.0, maxiter_bjorck=20), (6, 6, 2)),
        (FrobeniusConv2D(2, 3, padding="valid", k_coef_lip=3.0), (6, 6, 2)),
    ],
)
def test_config_round_trip_gives_identical_layer(layer, input_shape):
    model = keras.Sequential([keras.Input(input_shape), layer])
    clone = keras.Sequential.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    x = np.random.default_rng(0).normal(size=(3,) + input_shape).astype("float32")
    np.testing.assert_allclose(clone.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert clone.layers[0].get_config() == layer.get_config()


def test_spectral_constraint_and_initializer_give_orthogonal_kernels():
    dense = keras.layers.Dense(6, kernel_constraint=SpectralConstraint(k_coef_lip=2.0))
    model = keras.Sequential([keras.Input((9,)), dense])
    model.compile(keras.optimizers.Adam(1e-1), "mse")
    rng = np.random.default_rng(1)
    model.train_on_batch(rng.normal(size=(8, 9)), rng.normal(size=(8, 6)))
    np.testing.assert_allclose(
        np.linalg.svd(keras.ops.convert_to_numpy(dense.kernel), compute_uv=False), 2.0, atol=1e-2
    )

    kernel = keras.ops.convert_to_numpy(SpectralInitializer(k_coef_lip=0.5)((3, 3, 4, 8)))
    np.testing.assert_allclose(np.linalg.svd(kernel.reshape(-1, 8), compute_uv=False), 0.5, atol=1e-3)

    frob = keras.ops.convert_to_numpy(FrobeniusConstraint()(rng.normal(size=(5, 3)).astype("float32")))
    assert np.linalg.norm(frob) == pytest.approx(1.0, rel=1e-5)
    clipped = keras.ops.convert_to_numpy(AutoWeightClipConstraint()(np.full((4, 4), 3.0, "float32")))
    np.testing.assert_allclose(clipped, 0.25)
    assert keras.ops.convert_to_numpy(WeightClipConstraint(0.1)(np.array([-1.0, 0.05, 2.0]))).tolist() == pytest.approx(
        [-0.1, 0.05, 0.1]
    )
    for obj in (
        SpectralConstraint(2.0),
        SpectralInitializer(k_coef_lip=0.5),
        FrobeniusConstraint(),
        WeightClipConstraint(0.1),
    ):
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
        assert restored.get_config() == obj.get_config()
