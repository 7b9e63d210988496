"""deel-lip drop-in fixes (issue 13): same semantics as deel-lip for the same names.

Each expected value is computed here from deel-lip's documented formula (numpy),
never copied from a run of this library.
"""

import math

import keras
import numpy as np
import pytest

from deel_lip_ext import losses, metrics, normalizers
from deel_lip_ext.constraints import AutoWeightClipConstraint
from deel_lip_ext.layers import CReLU, Householder, MaxMin, MaxMinHalves


def _numpy(tensor):
    return np.asarray(keras.ops.convert_to_numpy(tensor))


# ---------------------------------------------------------------- 1. AutoWeightClipConstraint in fit


def test_auto_weight_clip_constraint_clips_to_its_bound_inside_fit():
    scale = 2.0
    dense = keras.layers.Dense(3, kernel_constraint=AutoWeightClipConstraint(scale=scale))
    model = keras.Sequential([keras.Input((4,)), dense])
    # A huge learning rate pushes every weight far past the bound after one step.
    model.compile(keras.optimizers.SGD(100.0), "mse")
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(32, 4)), 10 * rng.normal(size=(32, 3)), epochs=1, batch_size=8, verbose=0)
    bound = 1.0 / (scale * math.sqrt(4 * 3))
    kernel = _numpy(dense.kernel)
    assert np.all(np.abs(kernel) <= bound * (1 + 1e-6))
    np.testing.assert_allclose(np.abs(kernel).max(), bound, rtol=1e-6)


def test_auto_weight_clip_constraint_works_in_a_traced_function():
    from _backend import compiled

    constraint = AutoWeightClipConstraint()
    traced = compiled(constraint)  # tf.function / jax.jit (torch: eager)
    out = _numpy(traced(np.full((5, 2), 3.0, "float32")))
    np.testing.assert_allclose(out, np.full((5, 2), 1.0 / math.sqrt(10)), rtol=1e-6)


# ---------------------------------------------------------------- 2. Householder half-planes


def _deel_lip_householder(x, theta):
    """deel-lip: keep (z1, z2) where z1 sin(t/2) - z2 cos(t/2) <= 0, else reflect."""
    z1, z2 = np.split(x.astype(np.float64), 2, axis=-1)
    keep = z1 * np.sin(theta / 2) - z2 * np.cos(theta / 2) <= 0
    reflected_1 = z1 * np.cos(theta) + z2 * np.sin(theta)
    reflected_2 = z1 * np.sin(theta) - z2 * np.cos(theta)
    return np.concatenate([np.where(keep, z1, reflected_1), np.where(keep, z2, reflected_2)], axis=-1)


def test_householder_default_outputs_min_then_max():
    x = np.array([[3.0, 1.0], [1.0, 3.0], [2.0, 2.0], [-1.0, 0.0]], np.float32)
    np.testing.assert_allclose(_numpy(Householder()(x)), [[1, 3], [1, 3], [2, 2], [-1, 0]], atol=1e-6)


@pytest.mark.parametrize("theta", [math.pi / 2, 0.0, math.pi, 1.0, -2.3])
def test_householder_matches_deel_lip_formula_including_ties(theta):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 8)).astype(np.float32)
    x[0, :4] = x[0, 4:]  # z1 == z2
    x[1, :4] = 0.0  # z1 == 0
    x[2] = 0.0  # both zero
    layer = Householder(theta_initializer=keras.initializers.Constant(theta))
    np.testing.assert_allclose(_numpy(layer(x)), _deel_lip_householder(x, theta), atol=1e-6)


# ---------------------------------------------------------------- 3. MaxMin = deel-lip's MaxMin


def test_maxmin_is_deel_lip_maxmin_including_ties():
    x = np.array([[1.0, -2.0, 0.0, -0.0, 3.0, 3.0]], np.float32)
    expected = np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], axis=-1)
    np.testing.assert_array_equal(_numpy(MaxMin()(x)), expected)
    np.testing.assert_array_equal(_numpy(MaxMin(k_coef_lip=2.0)(x)), 2 * expected)
    assert MaxMin().compute_output_shape((None, 5, 5, 6)) == (None, 5, 5, 12)
    assert isinstance(MaxMin(), CReLU)


def test_maxmin_halves_is_the_former_maxmin():
    x = np.array([[1.0, 5.0, 3.0, 5.0, 2.0, 3.0]], np.float32)
    a, b = x[:, :3], x[:, 3:]
    np.testing.assert_array_equal(_numpy(MaxMinHalves()(x)), np.concatenate([np.maximum(a, b), np.minimum(a, b)], -1))


def test_maxmin_keras_round_trip_keeps_deel_lip_semantics(tmp_path):
    model = keras.Sequential([keras.Input((4,)), MaxMin(), MaxMinHalves()])
    path = tmp_path / "maxmin.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert [type(layer) for layer in loaded.layers] == [MaxMin, MaxMinHalves]
    x = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    np.testing.assert_array_equal(_numpy(loaded(x)), _numpy(model(x)))


def test_files_saved_before_the_rename_load_the_halves_activation():
    # Before the rename, the halves activation was saved as class "MaxMin", registered "deel_lip_ext>MaxMin".
    old = {
        "module": "deel_lip_ext.layers.activations",
        "class_name": "MaxMin",
        "config": {"name": "act", "k_coef_lip": 1.0, "data_format": "channels_last", "trainable": True},
        "registered_name": "deel_lip_ext>MaxMin",
    }
    layer = keras.saving.deserialize_keras_object(old)
    assert type(layer) is MaxMinHalves
    new = keras.saving.serialize_keras_object(MaxMin())
    assert new["registered_name"] == "deel_lip_ext>DeelLipMaxMin"
    assert type(keras.saving.deserialize_keras_object(new)) is MaxMin


# ---------------------------------------------------------------- 4. binary metrics accept (N,)


@pytest.mark.parametrize(
    "make",
    [
        lambda: metrics.BinaryProvableRobustAccuracy(epsilon=0.5, lip_const=2.0),
        lambda: metrics.BinaryProvableAvgRobustness(lip_const=2.0),
        lambda: metrics.BinaryProvableAvgRobustness(lip_const=2.0, negative_robustness=True),
    ],
)
def test_binary_metrics_accept_flat_predictions(make):
    y_true = np.array([1.0, 0.0, 1.0, 0.0, 1.0], np.float32)
    y_pred = np.array([2.5, -0.3, -1.0, 4.0, 0.9], np.float32)
    flat, column = make(), make()
    flat.update_state(y_true, y_pred)
    column.update_state(y_true[:, None], y_pred[:, None])
    signed = np.where(y_true > 0, 1, -1) * y_pred / 2.0
    if isinstance(flat, metrics.BinaryProvableRobustAccuracy):
        expected = np.mean(signed > 0.5)
    elif flat.negative_robustness:
        expected = signed.mean()
    else:
        expected = np.maximum(signed, 0).mean()
    np.testing.assert_allclose(float(flat.result()), expected, rtol=1e-6)
    np.testing.assert_allclose(float(column.result()), expected, rtol=1e-6)


def test_binary_metrics_still_refuse_several_logits():
    with pytest.raises(ValueError, match="single-logit"):
        metrics.BinaryProvableAvgRobustness().update_state(np.ones((3, 2)), np.ones((3, 2), np.float32))


# ---------------------------------------------------------------- 5. u=None in the normalizers


def test_spectral_normalization_starts_from_a_random_vector_when_u_is_none():
    kernel = np.random.default_rng(3).normal(size=(3, 3, 4, 6)).astype(np.float32)
    normalized, u, sigma = normalizers.spectral_normalization(kernel, None, eps=0.0, maxiter=200)
    true_sigma = np.linalg.norm(kernel.reshape(-1, 6), 2)
    np.testing.assert_allclose(float(sigma), true_sigma, rtol=1e-4)
    assert tuple(u.shape) == (1, 6) and tuple(normalized.shape) == kernel.shape
    np.testing.assert_allclose(np.linalg.norm(_numpy(normalized).reshape(-1, 6), 2), 1.0, rtol=1e-4)


def test_reshaped_kernel_orthogonalization_accepts_u_none():
    kernel = np.random.default_rng(4).normal(size=(12, 5)).astype(np.float32)
    w_bar, u, _ = normalizers.reshaped_kernel_orthogonalization(
        kernel, None, eps_spectral=0.0, eps_bjorck=0.0, maxiter_spectral=50, maxiter_bjorck=30
    )
    np.testing.assert_allclose(np.linalg.svd(_numpy(w_bar), compute_uv=False), np.ones(5), atol=1e-4)
    assert tuple(u.shape) == (1, 5)


# ---------------------------------------------------------------- 6. channels_first (documented difference)


def test_householder_channels_first_raises_value_error():
    with pytest.raises(ValueError, match="data_format"):
        Householder(data_format="channels_first")


# ---------------------------------------------------------------- 7. multi-class hinge on rows that are not one-hot


def _deel_lip_multiclass_hinge(y, f, m):
    """deel-lip's elementwise definition: mean_c w_c relu(m/2 - s_c f_c), s_c = 1 if y_c > 0 else -1, w_c = C - 1
    where s_c = 1, else 1 (a one-hot row gives the usual one-vs-rest form)."""
    sign = np.where(y > 0, 1.0, -1.0)
    hinge = np.maximum(0.0, m / 2 - sign * f)
    return np.mean(np.where(sign > 0, (f.shape[-1] - 1) * hinge, hinge), axis=-1)


@pytest.mark.parametrize(
    "y",
    [
        np.array([[1.0], [1.0], [1.0], [0.0], [0.0], [0.0]]),  # binary labels in one column (C = 1)
        np.array([[1.0, 0, 0], [0, 0, 0], [1, 1, 0], [0, 1, 1], [0, 0, 1], [1, 1, 1]]),  # none / several positive
        np.array([[1.0, -1, -1], [-1, -1, -1], [1, 1, -1], [-1, 1, 1], [-1, -1, 1], [1, 1, 1]]),  # same in {-1, 1}
    ],
)
def test_multiclass_hinge_follows_deel_lip_on_rows_that_are_not_one_hot(y):
    f = np.random.default_rng(3).normal(size=y.shape) * 2
    m, alpha = 2.0, 2.5
    expected = _deel_lip_multiclass_hinge(y, f, m)
    y32, f32 = y.astype("float32"), f.astype("float32")
    hinge = _numpy(losses.MulticlassHinge(m, reduction="none")(y32, f32))
    np.testing.assert_allclose(hinge, expected, rtol=1e-5, atol=1e-6)
    kr = _numpy(losses.MulticlassKR(reduction="none")(y32, f32))
    hkr = _numpy(losses.MulticlassHKR(alpha, m, reduction="none")(y32, f32))
    np.testing.assert_allclose(hkr, -kr + alpha * expected, rtol=1e-5, atol=1e-6)
