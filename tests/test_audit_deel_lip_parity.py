"""Independent audit of the deel-lip drop-in (issue 13): names, keyword arguments, defaults, formulas.

Written from deel-lip 1.5.1 / 2.0's documented signatures and docstrings (not from its tests).
A difference that is a library defect is an `xfail(strict=True)` naming it: the test turns
red (XPASS) the day the library is fixed, so the marker must then go.
"""

import importlib
import math
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import deel_lip_ext
from deel_lip_ext import callbacks, constraints, initializers, layers, losses, metrics, normalizers, utils

ROOT = pathlib.Path(__file__).resolve().parents[1]

EPS_SPECTRAL, EPS_BJORCK, BETA_BJORCK, MAXITER_SPECTRAL, MAXITER_BJORCK = 1e-3, 1e-3, 0.5, 10, 15
RKO_DEFAULTS = {
    "k_coef_lip": 1.0,
    "eps_spectral": EPS_SPECTRAL,
    "eps_bjorck": EPS_BJORCK,
    "beta_bjorck": BETA_BJORCK,
    "maxiter_spectral": MAXITER_SPECTRAL,
    "maxiter_bjorck": MAXITER_BJORCK,
}


def _numpy(tensor):
    return np.asarray(keras.ops.convert_to_numpy(tensor))


def _run_fresh(code, cwd):
    """Run `code` in a fresh interpreter (this process has imported every submodule already)."""
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


# ----------------------------------------------------------------------------- defaults


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: layers.SpectralDense(4), RKO_DEFAULTS),
        (lambda: layers.SpectralConv2D(4, 3), {**RKO_DEFAULTS, "padding": "same", "strides": (1, 1)}),
        (lambda: layers.SpectralConv2DTranspose(4, 3), {**RKO_DEFAULTS, "padding": "same", "strides": (1, 1)}),
        (lambda: layers.PadConv2D(4, 3), {**RKO_DEFAULTS, "padding": "same", "strides": (1, 1)}),
        (lambda: layers.FrobeniusDense(4), {"k_coef_lip": 1.0, "disjoint_neurons": True}),
        (lambda: layers.FrobeniusConv2D(4, 3), {"k_coef_lip": 1.0, "padding": "same"}),
        (lambda: layers.GroupSort(), {"n": None, "k_coef_lip": 1.0, "data_format": "channels_last"}),
        (lambda: layers.MaxMin(), {"k_coef_lip": 1.0, "data_format": "channels_last"}),
        (lambda: layers.Householder(), {"k_coef_lip": 1.0, "data_format": "channels_last"}),
        (lambda: layers.ScaledAveragePooling2D(), {"pool_size": (2, 2), "padding": "valid", "k_coef_lip": 1.0}),
        (
            lambda: layers.ScaledL2NormPooling2D(),
            {"pool_size": (2, 2), "padding": "valid", "k_coef_lip": 1.0, "eps_grad_sqrt": 1e-6},
        ),
        (lambda: layers.ScaledGlobalL2NormPooling2D(), {"k_coef_lip": 1.0, "eps_grad_sqrt": 1e-6}),
        (lambda: layers.ScaledGlobalAveragePooling2D(), {"k_coef_lip": 1.0}),
        (lambda: constraints.SpectralConstraint(), {k: v for k, v in RKO_DEFAULTS.items() if "maxiter" not in k}),
        (lambda: constraints.AutoWeightClipConstraint(), {"scale": 1.0}),
        (lambda: constraints.FrobeniusConstraint(), {"eps": 1e-7}),
        (
            lambda: initializers.SpectralInitializer(),
            {"eps_spectral": EPS_SPECTRAL, "eps_bjorck": EPS_BJORCK, "beta_bjorck": BETA_BJORCK},
        ),
        (lambda: losses.MulticlassHKR(), {"alpha": 10.0, "min_margin": 1.0, "multi_gpu": False}),
        (lambda: losses.MulticlassHinge(), {"min_margin": 1.0}),
        (lambda: losses.HingeMargin(), {"min_margin": 1.0}),
        (lambda: losses.MultiMargin(), {"min_margin": 1.0}),
        (lambda: losses.HKR(alpha=5.0), {"min_margin": 1.0, "multi_gpu": False}),
        (
            lambda: losses.MulticlassSoftHKR(),
            {"alpha": 10.0, "min_margin": 1.0, "alpha_mean": 0.99, "temperature": 1.0},
        ),
        (
            lambda: metrics.CategoricalProvableRobustAccuracy(),
            {"epsilon": 36 / 255, "lip_const": 1.0, "disjoint_neurons": True},
        ),
        (lambda: metrics.BinaryProvableRobustAccuracy(), {"epsilon": 36 / 255, "lip_const": 1.0}),
        (
            lambda: metrics.CategoricalProvableAvgRobustness(),
            {"lip_const": 1.0, "disjoint_neurons": True, "negative_robustness": False},
        ),
        (lambda: metrics.BinaryProvableAvgRobustness(), {"lip_const": 1.0, "negative_robustness": False}),
    ],
    ids=lambda value: "" if callable(value) or isinstance(value, dict) else str(value),
)
def test_defaults_are_deel_lips(make, expected):
    obj = make()
    config = obj.get_config()
    for key, value in expected.items():
        got = config[key] if key in config else getattr(obj, key)
        if isinstance(value, tuple):
            got = tuple(got)
        if isinstance(value, float):
            assert float(got) == pytest.approx(value, rel=1e-6), (type(obj).__name__, key, got)
        else:
            assert got == value, (type(obj).__name__, key, got)


def test_normalizer_constants_are_deel_lips():
    assert (
        normalizers.DEFAULT_EPS_SPECTRAL,
        normalizers.DEFAULT_EPS_BJORCK,
        normalizers.DEFAULT_BETA_BJORCK,
        normalizers.DEFAULT_MAXITER_SPECTRAL,
        normalizers.DEFAULT_MAXITER_BJORCK,
    ) == (EPS_SPECTRAL, EPS_BJORCK, BETA_BJORCK, MAXITER_SPECTRAL, MAXITER_BJORCK)


# ----------------------------------------------------------------------------- deel-lip keyword arguments


@pytest.mark.parametrize(
    "call",
    [
        # Every keyword deel-lip documents for these names, set to deel-lip's default value.
        lambda: layers.SpectralDense(
            units=4,
            activation=None,
            use_bias=True,
            bias_initializer="zeros",
            kernel_regularizer=None,
            bias_regularizer=None,
            activity_regularizer=None,
            kernel_constraint=None,
            bias_constraint=None,
            **RKO_DEFAULTS,
        ),
        lambda: layers.FrobeniusDense(units=4, activation=None, use_bias=True, disjoint_neurons=True, k_coef_lip=1.0),
        lambda: layers.SpectralConv2D(
            filters=4,
            kernel_size=3,
            strides=(1, 1),
            padding="same",
            data_format=None,
            dilation_rate=(1, 1),
            activation=None,
            use_bias=True,
            bias_initializer="zeros",
            **RKO_DEFAULTS,
        ),
        lambda: layers.SpectralConv2DTranspose(
            filters=4,
            kernel_size=3,
            strides=(1, 1),
            padding="same",
            output_padding=None,
            data_format=None,
            dilation_rate=(1, 1),
            activation=None,
            use_bias=True,
            **RKO_DEFAULTS,
        ),
        lambda: layers.PadConv2D(
            filters=4,
            kernel_size=3,
            strides=(1, 1),
            padding="reflect",
            data_format=None,
            dilation_rate=(1, 1),
            activation=None,
            use_bias=True,
            kernel_initializer="glorot_uniform",
        ),
        lambda: layers.GroupSort(n=2, data_format="channels_last", k_coef_lip=1.0),
        lambda: layers.MaxMin(data_format="channels_last", k_coef_lip=1.0),
        lambda: layers.Householder(data_format="channels_last", k_coef_lip=1.0, theta_initializer=None),
        lambda: layers.ScaledL2NormPooling2D(
            pool_size=(2, 2), strides=None, padding="valid", data_format=None, k_coef_lip=1.0, eps_grad_sqrt=1e-6
        ),
        lambda: layers.InvertibleDownSampling(pool_size=(2, 2), data_format="channels_last", name="down"),
        lambda: constraints.WeightClipConstraint(c=2),
        lambda: constraints.AutoWeightClipConstraint(scale=1),
        lambda: constraints.FrobeniusConstraint(eps=1e-7),
        lambda: initializers.SpectralInitializer(
            eps_spectral=EPS_SPECTRAL, eps_bjorck=EPS_BJORCK, beta_bjorck=BETA_BJORCK, k_coef_lip=1.0
        ),
        lambda: callbacks.MonitorCallback(
            monitored_layers=["dense"], logdir=None, target="kernel", what="max", on_epoch=True, on_batch=False
        ),
        lambda: callbacks.CondenseCallback(on_epoch=True, on_batch=False),
        lambda: callbacks.LossParamScheduler(param_name="alpha", fp=[1.0, 2.0], xp=[0, 10], step=0),
        lambda: callbacks.LossParamLog(param_name="alpha", rate=1),
        lambda: deel_lip_ext.Sequential(layers=None, name="model", k_coef_lip=1.0),
    ],
)
def test_deel_lip_keyword_arguments_are_accepted(call):
    call()


def test_spectral_constraint_takes_deel_lips_u():
    constraints.SpectralConstraint(k_coef_lip=1.0, u=None)
    # u is the power iteration's start: from the top right singular vector, one step finds sigma exactly.
    rng = np.random.default_rng(7)
    w = rng.normal(size=(6, 4)).astype(np.float32)
    _, values, vt = np.linalg.svd(w.astype(np.float64))
    constraint = constraints.SpectralConstraint(
        eps_spectral=1e-6, eps_bjorck=None, maxiter_spectral=1, u=vt[:1].astype(np.float32)
    )
    np.testing.assert_allclose(_numpy(constraint(w)), w / (values[0] + 1e-6), rtol=1e-5)
    restored = constraints.SpectralConstraint.from_config(constraint.get_config())
    np.testing.assert_array_equal(restored.u, constraint.u)
    with pytest.raises(ValueError, match="units"):
        constraints.SpectralConstraint(u=np.ones((1, 3), np.float32))(w)


def test_evaluate_lip_const_takes_deel_lips_eps_and_seed():
    model = keras.Sequential([keras.Input((4,)), layers.SpectralDense(3)])
    x = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")
    assert 0.0 < utils.evaluate_lip_const(model, x, eps=1e-4, seed=0) <= 1.0 + 1e-3
    assert 0.0 < utils.evaluate_lip_const(model, x, 1e-4) <= 1.0 + 1e-3


def test_compute_sv_takes_deel_lips_supplementary_type2sv():
    model = keras.Sequential([keras.Input((4,)), layers.SpectralDense(3, name="dense")])
    utils.compute_layer_sv(model.layers[0], supplementary_type2sv={})
    utils.compute_model_sv(model, supplementary_type2sv={})

    class Doubling(keras.layers.Layer):  # a layer type the library does not know
        def call(self, x):
            return 2.0 * x

    model = keras.Sequential([keras.Input((4,)), layers.SpectralDense(3, name="dense"), Doubling(name="double")])
    seen = []

    def doubling_sv(layer, input_shape):
        seen.append(tuple(input_shape))
        return (2.0, 2.0)

    assert utils.compute_layer_sv(model.layers[1]) is None
    assert utils.compute_layer_sv(model.layers[1], supplementary_type2sv={Doubling: doubling_sv}) == (2.0, 2.0)
    assert utils.compute_layer_sv(model.layers[1], {Doubling: doubling_sv}) == (2.0, 2.0)  # deel-lip's order
    values = utils.compute_model_sv(model, supplementary_type2sv={Doubling: doubling_sv})
    assert values["double"] == (2.0, 2.0) and values["dense"] == pytest.approx((1.0, 1.0), rel=1e-3)
    assert seen[-1] == (None, 3)
    # The library's exact values take precedence over a user function for the layers it knows.
    values = utils.compute_model_sv(model, {layers.SpectralDense: lambda layer, shape: (5.0, 5.0)})
    assert values["dense"] == pytest.approx((1.0, 1.0), rel=1e-3)


def test_pad_conv_padding_is_case_insensitive():
    upper = layers.PadConv2D(2, 3, padding="REFLECT")
    lower = layers.PadConv2D(2, 3, padding="reflect")
    assert upper.get_config()["padding"] == "reflect"
    x = np.random.default_rng(8).normal(size=(1, 5, 5, 2)).astype(np.float32)
    upper.build(x.shape)
    lower.build(x.shape)
    lower.set_weights(upper.get_weights())
    np.testing.assert_allclose(_numpy(upper(x)), _numpy(lower(x)), atol=1e-6)
    with pytest.raises(ValueError, match="padding"):
        layers.PadConv2D(2, 3, padding="mirror")


# ----------------------------------------------------------------------------- activations on fixed inputs


def _deel_lip_group_sort(x, n):
    """deel-lip GroupSort: groups of n consecutive channels sorted ascending; n=None or n > C: one group."""
    channels = x.shape[-1]
    n = channels if n is None or n > channels else n
    return np.sort(x.reshape(-1, channels // n, n), axis=-1).reshape(x.shape)


@pytest.mark.parametrize("n", [2, 3, 6, None])
def test_group_sort_is_deel_lips_including_ties(n):
    x = np.array(
        [[3.0, 1.0, 2.0, 2.0, -1.0, -1.0], [0.0, -0.0, 5.0, -5.0, 1.0, 1.0], [4.0, 4.0, 4.0, 4.0, 4.0, 4.0]],
        np.float32,
    )
    np.testing.assert_array_equal(_numpy(layers.GroupSort(n=n)(x)), _deel_lip_group_sort(x, n))
    np.testing.assert_array_equal(_numpy(layers.GroupSort(n=n, k_coef_lip=2.0)(x)), 2 * _deel_lip_group_sort(x, n))
    if n == 2:
        np.testing.assert_array_equal(_numpy(layers.GroupSort2()(x)), _deel_lip_group_sort(x, 2))
    if n is None:
        np.testing.assert_array_equal(_numpy(layers.FullSort()(x)), _deel_lip_group_sort(x, None))


def test_group_sort_on_images_sorts_along_channels_only():
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 6)).astype(np.float32)
    x[0, 0, 0, :2] = 1.5  # a tie
    np.testing.assert_array_equal(_numpy(layers.GroupSort2()(x)), _deel_lip_group_sort(x, 2))


def test_group_sort_with_n_larger_than_the_channels_is_a_full_sort():
    x = np.array([[3.0, 1.0, -1.0, 2.0]], np.float32)
    np.testing.assert_array_equal(_numpy(layers.GroupSort(n=8)(x)), np.sort(x, axis=-1))


def test_maxmin_on_images_concatenates_along_channels():
    x = np.random.default_rng(1).normal(size=(2, 3, 3, 4)).astype(np.float32)
    x[0, 0, 0, 0] = 0.0
    expected = np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], axis=-1)
    np.testing.assert_array_equal(_numpy(layers.MaxMin()(x)), expected)
    assert deel_lip_ext.activations.MaxMin is layers.MaxMin


def test_householder_on_images_pairs_the_channel_halves():
    theta = np.array([0.3, math.pi / 2, -1.2], np.float32)
    x = np.random.default_rng(2).normal(size=(2, 3, 3, 6)).astype(np.float32)
    x[0, 0, 0, :3] = x[0, 0, 0, 3:]  # ties on every pair of one pixel
    layer = layers.Householder(theta_initializer=keras.initializers.Constant(theta))
    out = _numpy(layer(x))
    z1, z2 = x[..., :3].astype(np.float64), x[..., 3:].astype(np.float64)
    keep = z1 * np.sin(theta / 2) - z2 * np.cos(theta / 2) <= 0
    expected = np.concatenate(
        [
            np.where(keep, z1, z1 * np.cos(theta) + z2 * np.sin(theta)),
            np.where(keep, z2, z1 * np.sin(theta) - z2 * np.cos(theta)),
        ],
        axis=-1,
    )
    np.testing.assert_allclose(out, expected, atol=1e-6)


# ----------------------------------------------------------------------------- metrics: labels in {1, -1}


@pytest.mark.parametrize("shape", ["flat", "column", "flat_labels_column_predictions"])
def test_binary_metrics_take_plus_minus_one_labels(shape):
    """deel-lip: labels in {1, 0} or {1, -1}, sign(y - 1e-3) gives the class."""
    y_true = np.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0], np.float32)
    y_pred = np.array([2.5, -0.3, -1.0, 4.0, 0.9, -2.0], np.float32)
    signed = np.sign(y_true - 1e-3) * y_pred / 2.0
    if shape == "column":
        y_true, y_pred = y_true[:, None], y_pred[:, None]
    elif shape == "flat_labels_column_predictions":
        y_pred = y_pred[:, None]
    accuracy = metrics.BinaryProvableRobustAccuracy(epsilon=0.4, lip_const=2.0)
    robustness = metrics.BinaryProvableAvgRobustness(lip_const=2.0)
    signed_robustness = metrics.BinaryProvableAvgRobustness(lip_const=2.0, negative_robustness=True)
    for metric in (accuracy, robustness, signed_robustness):
        metric.update_state(y_true, y_pred)
    assert float(accuracy.result()) == pytest.approx(np.mean(signed > 0.4), rel=1e-6)
    assert float(robustness.result()) == pytest.approx(np.maximum(signed, 0).mean(), rel=1e-6)
    assert float(signed_robustness.result()) == pytest.approx(signed.mean(), rel=1e-6)


def test_categorical_metrics_take_plus_minus_one_labels_and_disjoint_factor():
    y_pred = np.array([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0], [1.0, 1.5, 0.2]], np.float32)
    labels = np.array([0, 1, 0])
    one_hot = np.where(np.eye(3)[labels] > 0, 1.0, -1.0).astype(np.float32)
    others = np.where(np.eye(3, dtype=bool)[labels], -np.inf, y_pred)
    margin = y_pred[np.arange(3), labels] - others.max(axis=-1)
    for disjoint, factor in ((True, 2.0 * 1.5), (False, math.sqrt(2) * 1.5)):
        metric = metrics.CategoricalProvableAvgRobustness(lip_const=1.5, disjoint_neurons=disjoint)
        metric.update_state(one_hot, y_pred)
        assert float(metric.result()) == pytest.approx(np.maximum(margin, 0).mean() / factor, rel=1e-6)
        accuracy = metrics.CategoricalProvableRobustAccuracy(epsilon=0.2, lip_const=1.5, disjoint_neurons=disjoint)
        accuracy.update_state(one_hot, y_pred)
        assert float(accuracy.result()) == pytest.approx(np.mean(margin / factor > 0.2), rel=1e-6)


# ----------------------------------------------------------------------------- normalizers


def test_spectral_normalization_conv_divides_by_sigma_plus_eps():
    rng = np.random.default_rng(3)
    kernel = rng.normal(size=(3, 3, 2, 3)).astype(np.float32)
    u = rng.normal(size=(1, 8, 8, 2)).astype(np.float32)
    w_bar, _, sigma = normalizers.spectral_normalization_conv(kernel, u, eps=1e-3, maxiter=500)
    np.testing.assert_allclose(_numpy(w_bar), kernel / (float(sigma) + 1e-3), rtol=1e-5)


def test_spectral_constraint_with_beta_none_skips_bjorck():
    w = np.random.default_rng(9).normal(size=(6, 4)).astype(np.float32)
    _, values, vt = np.linalg.svd(w.astype(np.float64))
    constraint = constraints.SpectralConstraint(beta_bjorck=None, maxiter_spectral=1, u=vt[:1].astype(np.float32))
    np.testing.assert_allclose(_numpy(constraint(w)), w / (values[0] + EPS_SPECTRAL), rtol=1e-5)
    assert constraints.SpectralConstraint.from_config(constraint.get_config()).beta_bjorck is None


def test_rko_with_beta_none_is_spectral_normalization_only():
    kernel = np.random.default_rng(4).normal(size=(6, 4)).astype(np.float32)
    w_bar, _, _ = normalizers.reshaped_kernel_orthogonalization(kernel, None, 1.0, 0.0, 1e-3, None, 200)
    values = np.linalg.svd(_numpy(w_bar), compute_uv=False)
    assert values.max() == pytest.approx(1.0, rel=1e-3) and values.min() < 0.9


def test_constraints_follow_deel_lips_formulas():
    w = np.random.default_rng(5).normal(size=(5, 3)).astype(np.float32) * 3
    np.testing.assert_allclose(_numpy(constraints.WeightClipConstraint(c=0.5)(w)), np.clip(w, -0.5, 0.5))
    np.testing.assert_allclose(
        _numpy(constraints.FrobeniusConstraint()(w)), w / (np.linalg.norm(w) + 1e-7), rtol=1e-5, atol=1e-7
    )
    bound = 1 / (math.sqrt(15) * 2.0)
    np.testing.assert_allclose(_numpy(constraints.AutoWeightClipConstraint(scale=2.0)(w)), np.clip(w, -bound, bound))


# ----------------------------------------------------------------------------- import deel_lip_ext alone


def test_import_deel_lip_ext_alone_imports_every_public_module(tmp_path):
    out = _run_fresh(
        """
        import pkgutil, sys
        import deel_lip_ext
        public = [m.name for m in pkgutil.iter_modules(deel_lip_ext.__path__) if not m.name.startswith("_")]
        print(sorted(name for name in public if f"deel_lip_ext.{name}" not in sys.modules))
        """,
        tmp_path,
    )
    assert out.strip() == "[]", out


def test_keras_file_with_orthogonality_regularizers_loads_after_import_deel_lip_ext(tmp_path):
    _run_fresh(
        """
        import keras, numpy as np
        from deel_lip_ext.regularizers import LorthRegularizer, OrthDenseRegularizer
        model = keras.Sequential([
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(4, 3, kernel_regularizer=LorthRegularizer(kernel_shape=(3, 3, 2, 4), lambda_lorth=0.1)),
            keras.layers.Flatten(),
            keras.layers.Dense(3, kernel_regularizer=OrthDenseRegularizer(0.2)),
        ])
        model.save("m.keras")
        """,
        tmp_path,
    )
    out = _run_fresh(
        """
        import keras
        import deel_lip_ext
        model = keras.saving.load_model("m.keras")
        print(type(model.layers[0].kernel_regularizer).__name__, type(model.layers[2].kernel_regularizer).__name__)
        """,
        tmp_path,
    )
    assert out.split() == ["LorthRegularizer", "OrthDenseRegularizer"]


# ----------------------------------------------------------------------------- the migration table

DEEL_LIP_PUBLIC_NAMES = (
    """
LipschitzLayer Condensable SpectralDense FrobeniusDense SpectralConv2D FrobeniusConv2D SpectralConv2DTranspose
GroupSort GroupSort2 FullSort MaxMin Householder PReLUlip ScaledAveragePooling2D ScaledGlobalAveragePooling2D
ScaledL2NormPooling2D ScaledGlobalL2NormPooling2D InvertibleDownSampling InvertibleUpSampling PadConv2D
KR HKR HingeMargin MulticlassKR MulticlassHinge MulticlassHKR MultiMargin CategoricalHinge TauCategoricalCrossentropy
TauSparseCategoricalCrossentropy TauBinaryCrossentropy MulticlassSoftHKR hinge_margin multiclass_hinge
CategoricalProvableRobustAccuracy BinaryProvableRobustAccuracy CategoricalProvableAvgRobustness
BinaryProvableAvgRobustness WeightClipConstraint AutoWeightClipConstraint FrobeniusConstraint SpectralConstraint
SpectralInitializer Lorth Lorth2D LorthRegularizer OrthDenseRegularizer spectral_normalization bjorck_normalization
reshaped_kernel_orthogonalization spectral_normalization_conv set_stop_grad_spectral set_swap_memory
CondenseCallback MonitorCallback LossParamScheduler LossParamLog evaluate_lip_const evaluate_lip_const_gen
process_labels_for_multi_gpu l2_normalize compute_layer_sv compute_model_sv Sequential Model vanillaModel
""".split()
    + [
        # In deel-lip's source (a later or experimental version), not checked against the 1.5.1 wheel.
        "SpectralDepthwiseConv2D",
        "HKRauto",
        "HingeMarginAuto",
        "set_grad_passthrough_bjorck",
    ]
)


def _migration_rows():
    text = (ROOT / "docs" / "migration.md").read_text()
    # Only the deel-lip name table: later sections (names moved inside this library) have other columns.
    text = text.split("## Name mapping", 1)[1].split("\n## ", 1)[0]
    return [line.split("|")[1:4] for line in text.splitlines() if line.startswith(("| `", "| —"))]


def test_migration_table_lists_every_public_deel_lip_name():
    """Issue 13: every public deel-lip 1.5.1 / 2.0 name has a row saying "same" or the difference."""
    rows = _migration_rows()
    assert len(rows) > 30
    deel_lip_column = " ".join(row[0] for row in rows)
    missing = [name for name in DEEL_LIP_PUBLIC_NAMES if not re.search(rf"\b{name}\b", deel_lip_column)]
    assert not missing, f"deel-lip names without a row in docs/migration.md: {missing}"
    assert all(row[2].strip() for row in rows), "a row without its difference (or 'same')"


def test_migration_rows_saying_same_names_resolve_here():
    """A row "same names in `deel_lip_ext.x`" promises every name of its first column in that module."""
    unresolved = []
    for deel_lip, ours, _ in _migration_rows():
        match = re.search(r"same names? in `(deel_lip_ext[\w.]*)`", ours)
        if not match:
            continue
        module = importlib.import_module(match.group(1))
        for name in re.findall(r"`([\w.]+)`", deel_lip):
            short = name.split(".")[-1]
            if not hasattr(module, short):
                unresolved.append(f"{match.group(1)}.{short}")
    assert not unresolved, unresolved


# ----------------------------------------------------------------------------- PadConv2D's paddings


@pytest.mark.parametrize(
    "padding, numpy_mode",
    [("constant", "constant"), ("reflect", "reflect"), ("symmetric", "symmetric"), ("circular", "wrap")],
)
@pytest.mark.parametrize("kernel, stride", [(3, 1), (3, 2), (5, 1), (5, 2)])
def test_pad_conv_is_deel_lips_pad_then_valid_conv_for_odd_kernels(padding, numpy_mode, kernel, stride):
    """deel-lip PadConv2D: pad k // 2 on every side with the mode, then a "valid" convolution."""
    layer = layers.PadConv2D(3, kernel, strides=stride, padding=padding, bias_initializer="random_normal")
    keras.Sequential([keras.Input((7, 7, 2)), layer])
    x = np.random.default_rng(6).normal(size=(2, 7, 7, 2)).astype("float32")
    half = kernel // 2
    padded = np.pad(x, ((0, 0), (half, half), (half, half), (0, 0)), mode=numpy_mode)
    expected = _numpy(keras.ops.conv(padded, layer.effective_kernel(), strides=stride, padding="valid"))
    expected = expected + _numpy(layer.bias)
    out = _numpy(layer(x))
    assert out.shape == (2, (7 + 2 * half - kernel) // stride + 1, (7 + 2 * half - kernel) // stride + 1, 3)
    np.testing.assert_allclose(out, expected, atol=1e-5)
