"""The BCOP paper's architectures: structure, measured Lipschitz bounds, upsampling, training, plotting."""

import keras
import numpy as np
import pytest
from conftest import data_available

from deel_lip_ext import layers as lip
from deel_lip_ext import zoo
from deel_lip_ext.plotting import layer_spectrum, plot_singular_values
from deel_lip_ext.utils import evaluate_lip_const, model_lipschitz_bound


def _structure(model):
    return [(type(layer).__name__, layer.output.shape[1:]) for layer in model.layers]


def test_kw_small_structure_on_mnist():
    model = zoo.kw_small("bcop", (28, 28, 1))
    assert _structure(model) == [
        ("InvertibleDownSampling", (14, 14, 4)), ("BCOPConv2D", (14, 14, 16)), ("MaxMinHalves", (14, 14, 16)),
        ("InvertibleDownSampling", (7, 7, 64)), ("BCOPConv2D", (7, 7, 32)), ("MaxMinHalves", (7, 7, 32)),
        ("Flatten", (1568,)), ("BjorckDense", (100,)), ("MaxMinHalves", (100,)), ("BjorckDense", (10,)),
    ]  # fmt: skip
    assert model.get_layer("conv1").conv_kernel_size == (2, 2)
    assert model.get_layer("conv1").padding == "circular"


def test_kw_large_structure_on_cifar():
    model = zoo.kw_large("rko", (32, 32, 3))
    convs = [layer for layer in model.layers if isinstance(layer, lip.RKOConv2D)]
    assert [(c.conv_input_shape[2], c.filters, c.conv_kernel_size) for c in convs] == [
        (3, 32, (3, 3)),
        (128, 32, (2, 2)),
        (32, 64, (3, 3)),
        (256, 64, (2, 2)),
    ]
    dense = [layer.units for layer in model.layers if isinstance(layer, lip.BjorckDense)]
    assert dense == [512, 512, 10]
    assert model.get_layer("flatten").output.shape[1:] == (4096,)


def test_fc3_structure():
    model = zoo.fc3((28, 28, 1))
    assert [layer.units for layer in model.layers if isinstance(layer, lip.BjorckDense)] == [1024, 1024, 1024, 10]
    assert sum(isinstance(layer, lip.MaxMinHalves) for layer in model.layers) == 3


@pytest.mark.parametrize(
    "conv, conv_class",
    [("bcop", lip.BCOPConv2D), ("rko", lip.RKOConv2D), ("ossn", lip.OSSNConv2D), ("svcm", lip.SVCMConv2D)],
)
def test_conv_choice_and_measured_bound(conv, conv_class):
    model = zoo.kw_small(conv, (8, 8, 1), num_classes=4)
    assert sum(isinstance(layer, conv_class) for layer in model.layers) == 2
    bound = model_lipschitz_bound(model)
    assert bound == pytest.approx(model_lipschitz_bound(model.vanilla_export()), rel=1e-6)
    x = np.random.default_rng(0).uniform(size=(4, 8, 8, 1)).astype("float32")
    assert evaluate_lip_const(model, x) <= bound * (1 + 1e-4)
    if conv == "bcop":
        assert bound == pytest.approx(1.0, abs=1e-5)
    elif conv == "rko":
        assert bound <= 1 + 1e-5


def test_dcgan_critic_structure_and_upsampling():
    critic = zoo.dcgan_critic("bcop", (32, 32, 3))
    assert isinstance(critic.layers[0], zoo.NearestUpSampling2D)
    assert critic.get_layer("flatten").output.shape[1:] == (8192,)
    assert [c.filters for c in critic.layers if isinstance(c, lip.BCOPConv2D)] == [64, 128, 256, 512]
    assert critic.output_shape[1:] == (1,)
    with pytest.raises(ValueError, match="activation"):
        zoo.dcgan_critic("bcop", (64, 64, 3), activation="tanh")
    relu_critic = zoo.dcgan_critic("rko", (64, 64, 3), activation="relu")
    assert sum(isinstance(layer, keras.layers.ReLU) for layer in relu_critic.layers) == 4
    assert not any(isinstance(layer, zoo.NearestUpSampling2D) for layer in relu_critic.layers)


@pytest.mark.parametrize("isometric, gain", [(True, 1.0), (False, 2.0)])
def test_nearest_upsampling_gain_is_exact(isometric, gain):
    layer = zoo.NearestUpSampling2D(2, isometric=isometric)
    x = np.random.default_rng(1).normal(size=(3, 4, 4, 2)).astype("float32")
    y = keras.ops.convert_to_numpy(layer(x))
    for row in range(2):
        for column in range(2):
            np.testing.assert_allclose(y[:, row::2, column::2], x * gain / 2.0, rtol=1e-6)
    norms = np.linalg.norm(x.reshape(3, -1), axis=1)
    np.testing.assert_allclose(np.linalg.norm(y.reshape(3, -1), axis=1), gain * norms, rtol=1e-5)
    assert layer.lipschitz_sv() == (gain, gain)
    assert zoo.NearestUpSampling2D.from_config(layer.get_config()).isometric is isometric


@pytest.mark.parametrize(
    "builder, kwargs, match",
    [
        (zoo.kw_small, {"conv": "spectral"}, "conv must be one of"),
        (zoo.kw_large, {"input_shape": (28, 28)}, "input_shape"),
        (zoo.kw_small, {"num_classes": 0}, "num_classes"),
        (zoo.fc3, {"width": 7}, "width"),
        (zoo.dcgan_critic, {"input_shape": (48, 48, 3)}, "multiple"),
    ],
)
def test_argument_errors(builder, kwargs, match):
    with pytest.raises(ValueError, match=match):
        builder(**kwargs)


@pytest.mark.skipif(not data_available("mnist"), reason="offline MNIST copy not available")
def test_kw_small_bcop_learns_mnist_and_plots_figure_2(tmp_path):
    from deel_lip_ext.datasets import load_numpy

    x_train, y_train, _, _ = load_numpy("mnist")
    x, y = x_train[:512], y_train[:512]
    model = zoo.kw_small("bcop", (28, 28, 1))
    conv = model.get_layer("conv2")
    before = layer_spectrum(conv)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    start = model.evaluate(x, y, verbose=0, return_dict=True)
    model.fit(x, y, batch_size=64, epochs=2, verbose=0)
    end = model.evaluate(x, y, verbose=0, return_dict=True)
    assert end["loss"] < start["loss"] - 0.3 and end["accuracy"] > start["accuracy"] + 0.2
    after = layer_spectrum(conv)
    # The GNP property survives training: every singular value is still 1 (the paper's Figure 2).
    assert before.size == after.size == 7 * 7 * 32 and np.abs(after - 1).max() < 1e-4
    rko = zoo.kw_small("rko", (28, 28, 1)).get_layer("conv2")
    path = tmp_path / "figure2.png"
    histograms = plot_singular_values({"BCOP before": before, "BCOP after": conv, "RKO init": rko}, path, bins=20)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert histograms["BCOP after"][0].sum() == after.size and histograms["BCOP after"][0][-1] == after.size
    assert histograms["RKO init"][0][:-1].sum() > 0  # RKO spreads its spectrum below 1


def test_plot_singular_values_errors(tmp_path):
    with pytest.raises(ValueError, match="spectra"):
        plot_singular_values([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="finite"):
        plot_singular_values({"bad": [np.nan]}, tmp_path / "x.png")
