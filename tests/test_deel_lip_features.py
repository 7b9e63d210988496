"""deel-lip features added for parity (issue 13): MulticlassSoftHKR, the orthogonality regularizers,
spectral_normalization_conv, MonitorCallback(target="kernel"), Sequential.set_klip_factor, vanillaModel.

Expected values come from numpy implementations of deel-lip's documented formulas.
"""

import math

import keras
import numpy as np
import pytest

from deel_lip_ext import normalizers
from deel_lip_ext.callbacks import MonitorCallback
from deel_lip_ext.layers import GroupSort2, SpectralDense
from deel_lip_ext.losses import MulticlassSoftHKR, carry_loss_state
from deel_lip_ext.model import Sequential, vanilla_model, vanillaModel
from deel_lip_ext.regularizers import Lorth2D, LorthRegularizer, OrthDenseRegularizer
from deel_lip_ext.utils import conv_operator_matrix


def _numpy(tensor):
    return np.asarray(keras.ops.convert_to_numpy(tensor), dtype=np.float64)


# ---------------------------------------------------------------- MulticlassSoftHKR


def _soft_hkr_reference(y_true, y_pred, alpha, min_margin, alpha_mean, temperature, mean):
    """deel-lip's MulticlassSoftHKR: (per-sample losses, new running mean)."""
    f = y_pred.astype(np.float64)
    mean = np.clip(alpha_mean * mean + (1 - alpha_mean) * np.abs(f).mean(), 0.005, 1000)
    t = np.clip(temperature * min_margin / np.clip(mean, min_margin, 20000), 0.005, 250)
    target = y_true > 0
    z = np.where(target, -np.inf, t * f)
    weights = np.exp(z - z.max(axis=-1, keepdims=True))
    weights = np.where(target, 1.0, weights / weights.sum(axis=-1, keepdims=True))
    signed = np.where(target, f, -f)
    kr = (weights * -signed).sum(-1)
    hinge = (weights * np.maximum(min_margin / 2 - signed, 0)).sum(-1)
    return (hinge if math.isinf(alpha) else kr / alpha + hinge), mean


@pytest.mark.parametrize(
    "alpha, min_margin, alpha_mean, temperature",
    [(10.0, 1.0, 0.99, 1.0), (5.0, 0.2, 0.5, 3.0), (float("inf"), 2.0, 0.9, 0.5)],
)
def test_multiclass_soft_hkr_matches_deel_lip_formula_over_batches(alpha, min_margin, alpha_mean, temperature):
    rng = np.random.default_rng(0)
    loss = MulticlassSoftHKR(alpha=alpha, min_margin=min_margin, alpha_mean=alpha_mean, temperature=temperature)
    per_sample = MulticlassSoftHKR(alpha, min_margin, alpha_mean, temperature, reduction=None)
    mean = min_margin
    for batch in range(3):
        y_pred = (rng.normal(size=(7, 5)) * (1 + 3 * batch)).astype(np.float32)
        y_true = np.eye(5, dtype=np.float32)[rng.integers(0, 5, size=7)]
        expected, new_mean = _soft_hkr_reference(y_true, y_pred, alpha, min_margin, alpha_mean, temperature, mean)
        np.testing.assert_allclose(float(loss(y_true, y_pred)), expected.mean(), rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(_numpy(per_sample(y_true, y_pred)), expected, rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(float(loss.current_mean), new_mean, rtol=1e-6)
        mean = new_mean


def test_multiclass_soft_hkr_trains_and_round_trips():
    loss = MulticlassSoftHKR(alpha=5.0, min_margin=0.5, alpha_mean=0.9, temperature=2.0)
    clone = MulticlassSoftHKR.from_config(loss.get_config())
    assert clone.get_config() == loss.get_config()
    model = keras.Sequential([keras.Input((6,)), SpectralDense(4)])
    model.compile(keras.optimizers.Adam(1e-2), loss=loss)
    carry_loss_state(model)  # JAX: the running mean is state of the train step
    rng = np.random.default_rng(1)
    history = model.fit(rng.normal(size=(32, 6)), np.eye(4)[rng.integers(0, 4, 32)], epochs=2, verbose=0, batch_size=8)
    assert np.all(np.isfinite(history.history["loss"]))
    assert float(loss.current_mean) != 0.5  # the running mean moved during fit


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha": 0.0}, "alpha"),
        ({"min_margin": 0.0}, "min_margin"),
        ({"alpha_mean": 1.5}, "alpha_mean"),
        ({"temperature": -1.0}, "temperature"),
    ],
)
def test_multiclass_soft_hkr_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MulticlassSoftHKR(**kwargs)


# ---------------------------------------------------------------- regularizers


def _lorth_reference(w, stride):
    """||conv(W, W) - I_centre||^2 - delta with explicit loops (deel-lip's definition)."""
    size, _, c_in, c_out = w.shape
    pad = ((size - 1) // stride) * stride
    out_size = (size + 2 * pad - size) // stride + 1
    out = np.zeros((c_out, out_size, out_size, c_out))
    for a in range(c_out):
        image = np.pad(w[:, :, :, a], ((pad, pad), (pad, pad), (0, 0)))
        for i in range(out_size):
            for j in range(out_size):
                patch = image[i * stride : i * stride + size, j * stride : j * stride + size, :]
                out[a, i, j, :] = np.tensordot(patch, w, axes=([0, 1, 2], [0, 1, 2]))
    target = np.zeros_like(out)
    centre = out_size // 2
    target[:, centre, centre, :] = np.eye(c_out)
    delta = max(0, c_out - stride**2 * c_in)
    return np.sum((out - target) ** 2) - delta


@pytest.mark.parametrize("shape, stride", [((3, 3, 2, 4), 1), ((3, 3, 4, 4), 2), ((5, 5, 2, 3), 1), ((3, 3, 1, 6), 1)])
def test_lorth_matches_numpy(shape, stride):
    w = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    with pytest.warns(UserWarning) if shape[2] * stride**2 == shape[3] else _no_warning():
        lorth = Lorth2D(kernel_shape=shape, stride=stride)
    np.testing.assert_allclose(float(lorth.compute_lorth(w)), _lorth_reference(w.astype(np.float64), stride), rtol=1e-5)
    regularizer = LorthRegularizer(kernel_shape=shape, stride=stride, lambda_lorth=0.3)
    np.testing.assert_allclose(float(regularizer(w)), 0.3 * _lorth_reference(w.astype(np.float64), stride), rtol=1e-5)


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


def test_lorth_of_an_orthogonal_convolution_is_zero():
    kernel = np.zeros((3, 3, 4, 4), np.float32)
    kernel[1, 1] = np.linalg.qr(np.random.default_rng(3).normal(size=(4, 4)))[0]
    with pytest.warns(UserWarning, match="hard to optimize"):
        lorth = Lorth2D(kernel_shape=kernel.shape)
    assert abs(float(lorth.compute_lorth(kernel))) < 1e-6


def test_lorth_padding_and_delta():
    lorth = Lorth2D()
    assert (lorth.kernel_shape, lorth.padding, lorth.delta) == (None, None, None)  # unset, as in deel-lip
    lorth.set_kernel_shape((5, 5, 32, 64))
    assert (lorth.padding, lorth.delta) == (4, 32)
    lorth.set_kernel_shape(None)
    assert (lorth.kernel_shape, lorth.padding, lorth.delta) == (None, None, None)
    lorth = Lorth2D(kernel_shape=(5, 5, 8, 70), stride=3)
    assert (lorth.padding, lorth.delta) == (3, 0)


@pytest.mark.parametrize(
    "shape, stride, match",
    [((1, 1, 1, 9), 3, "Impossible RO"), ((3, 3, 8, 200), 4, "Impossible CO"), ((4, 4, 2, 2), 1, "odd")],
)
def test_lorth_refuses_impossible_configurations(shape, stride, match):
    with pytest.raises(ValueError, match=match):
        Lorth2D(kernel_shape=shape, stride=stride)


def test_lorth_regularizer_config_dim_and_lazy_shape():
    regularizer = LorthRegularizer(kernel_shape=(3, 3, 2, 4), stride=1, lambda_lorth=2.0)
    clone = LorthRegularizer.from_config(regularizer.get_config())
    w = np.random.default_rng(4).normal(size=(3, 3, 2, 4)).astype(np.float32)
    assert float(clone(w)) == pytest.approx(float(regularizer(w)))
    with pytest.raises(NotImplementedError):
        LorthRegularizer(dim=1)
    lazy = LorthRegularizer(lambda_lorth=2.0)
    assert float(lazy(w)) == pytest.approx(float(regularizer(w)))
    conv = keras.layers.Conv2D(4, 3, kernel_regularizer=LorthRegularizer(lambda_lorth=1.0))
    keras.Sequential([keras.Input((6, 6, 2)), conv])
    assert len(conv.losses) == 1


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (5, 5)])
def test_orth_dense_regularizer_matches_numpy(shape):
    w = np.random.default_rng(5).normal(size=shape)
    gram = w @ w.T if shape[0] <= shape[1] else w.T @ w
    expected = 0.7 * np.sum((gram - np.eye(gram.shape[0])) ** 2)
    assert float(OrthDenseRegularizer(0.7)(w.astype(np.float32))) == pytest.approx(expected, rel=1e-5)
    assert OrthDenseRegularizer.from_config(OrthDenseRegularizer(0.7).get_config()).lambda_orth == 0.7
    with pytest.raises(ValueError, match="lambda_orth"):
        OrthDenseRegularizer(-1.0)


# ---------------------------------------------------------------- spectral_normalization_conv


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("conv_first", [True, False])
def test_spectral_normalization_conv_uses_the_convolution_operator(stride, conv_first):
    rng = np.random.default_rng(6)
    kernel = rng.normal(size=(3, 3, 2, 3)).astype(np.float32)
    exact = np.linalg.norm(conv_operator_matrix(kernel, (8, 8, 2), (stride, stride), "same").astype(np.float64), 2)
    shape = (1, 8, 8, 2) if conv_first else (1, 8 // stride, 8 // stride, 3)
    w_bar, u, sigma = normalizers.spectral_normalization_conv(
        kernel, rng.normal(size=shape).astype(np.float32), stride=stride, conv_first=conv_first, eps=0.0, maxiter=3000
    )
    assert float(sigma) == pytest.approx(exact, rel=1e-4)
    assert tuple(u.shape) == shape
    normalized = np.linalg.norm(conv_operator_matrix(_numpy(w_bar), (8, 8, 2), (stride, stride), "same"), 2)
    assert normalized == pytest.approx(1.0, rel=1e-4)


def test_spectral_normalization_conv_negative_eps_and_bad_arguments():
    kernel = np.ones((3, 3, 1, 1), np.float32)
    u = np.ones((1, 4, 4, 1), np.float32)
    w_bar, _, _ = normalizers.spectral_normalization_conv(kernel, u, eps=-1.0)
    np.testing.assert_array_equal(_numpy(w_bar), kernel)
    with pytest.raises(ValueError, match="pad_func"):
        normalizers.spectral_normalization_conv(kernel, u, pad_func=lambda x: x)
    with pytest.raises(ValueError, match="multiple of stride"):
        normalizers.spectral_normalization_conv(kernel, np.ones((1, 5, 5, 1), np.float32), stride=2)


# ---------------------------------------------------------------- MonitorCallback(target="kernel")


def test_monitor_callback_kernel_target_reports_the_raw_kernel():
    dense = SpectralDense(3, name="dense")
    model = keras.Sequential([keras.Input((5,)), dense])
    model.compile(keras.optimizers.SGD(0.5), "mse")
    rng = np.random.default_rng(7)
    raw = MonitorCallback(["dense"], target="kernel")
    history = model.fit(rng.normal(size=(16, 5)), 5 * rng.normal(size=(16, 3)), epochs=1, verbose=0, callbacks=[raw])
    values = np.linalg.svd(_numpy(dense.kernel), compute_uv=False)
    assert history.history["dense_sv_max"][-1] == pytest.approx(values.max(), rel=1e-6)
    assert history.history["dense_sv_min"][-1] == pytest.approx(values.min(), rel=1e-6)
    constrained = MonitorCallback(["dense"])
    x, y = rng.normal(size=(16, 5)), rng.normal(size=(16, 3))
    history = model.fit(x, y, epochs=1, verbose=0, callbacks=[constrained])
    assert history.history["dense_sv_max"][-1] == pytest.approx(1.0, abs=2e-3)
    assert MonitorCallback(["dense"], target="kernel").get_config()["target"] == "kernel"
    with pytest.raises(ValueError, match="target"):
        MonitorCallback(["dense"], target="sig")


# ---------------------------------------------------------------- Sequential.set_klip_factor, vanillaModel


def test_set_klip_factor_splits_the_constant_after_construction():
    model = Sequential([keras.Input((4,)), SpectralDense(4), GroupSort2(), SpectralDense(4)])
    x = np.random.default_rng(8).normal(size=(3, 4)).astype(np.float32)
    before = _numpy(model(x))  # an eager call fills the kernel caches
    model.set_klip_factor(8.0)
    assert model.k_coef_lip == 8.0
    assert [layer.k_coef_lip for layer in model.layers] == pytest.approx([2.0, 2.0, 2.0])
    # The whole model is 8 times the 1-Lipschitz one (every layer is positively homogeneous, no bias at init).
    np.testing.assert_allclose(_numpy(model(x)), 8.0 * before, rtol=1e-4, atol=1e-5)
    for layer in (model.layers[0], model.layers[2]):
        assert np.linalg.norm(_numpy(layer.effective_kernel()), 2) == pytest.approx(2.0, rel=2e-3)
    np.testing.assert_allclose(_numpy(vanilla_model(model)(x)), _numpy(model(x)), atol=1e-5)


def test_set_klip_factor_refuses_after_fit():
    model = Sequential([keras.Input((4,)), SpectralDense(2)])
    model.compile("sgd", "mse")
    model.fit(np.ones((4, 4)), np.ones((4, 2)), verbose=0)
    with pytest.raises(RuntimeError, match="before fit"):
        model.set_klip_factor(2.0)
    with pytest.raises(ValueError, match="k_coef_lip"):
        Sequential([keras.Input((4,)), SpectralDense(2)]).set_klip_factor(-1.0)


def test_vanilla_model_has_deel_lips_name():
    assert vanillaModel is vanilla_model
