"""Defects an independent audit of the losses found, one test each (run on TensorFlow, JAX and PyTorch).

Each test fails on the code before its fix: NaN KR terms in compiled steps, losses saved without what
they compute with, out-of-range class indices counted as well classified (JAX), EMMA in float16, a
single-logit LseHKR's `math domain error`, and EMMA's gradient through its pairwise constants.
"""

import math

import keras
import numpy as np
import pytest

from deel_lip_ext import losses
from deel_lip_ext.layers.linf import LogitScale
from _backend import gradients

BACKEND = keras.backend.backend()


def _numpy(value):
    return keras.ops.convert_to_numpy(value)


def _one_unit_model():
    inputs = keras.Input((1,))
    return keras.Model(inputs, keras.layers.Dense(1, kernel_initializer="ones")(inputs))


@pytest.mark.parametrize("jit_compile", [True, False])
@pytest.mark.parametrize("loss_name", ["HKR", "KR"])
def test_kr_losses_stay_finite_on_a_compiled_batch_without_negatives(loss_name, jit_compile):
    # The first batch of 3 is all positive: (B - n_pos) + 1e-7 was reassociated to 0 once compiled (0 / 0).
    x = np.arange(1, 7, dtype="float32")[:, None]
    y = np.float32([1, 1, 1, 0, 1, 0])
    loss = losses.HKR(alpha=10.0) if loss_name == "HKR" else losses.KR()
    model = _one_unit_model()
    model.compile("sgd", loss=loss, metrics=[losses.KR()], jit_compile=jit_compile and BACKEND != "torch")
    first_batch = model.evaluate(x[:3], y[:3], batch_size=3, verbose=0, return_dict=True)
    # KR of a batch with positives only: the mean of their outputs (the negatives' term is 0).
    assert first_batch["KR"] == pytest.approx(2.0, rel=1e-5)
    model.fit(x, y, batch_size=3, epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(_numpy(model.layers[-1].kernel)).all()


def test_multiclass_kr_of_a_one_class_batch_is_the_mean_of_its_positives():
    y = np.float32([[1, 0, 0]] * 3)
    f = np.float32([[0.3, 1.0, -1.0], [0.6, 2.0, 0.0], [0.0, 0.5, 0.5]])
    compiled = keras.Sequential([keras.Input((3,)), keras.layers.Identity()])
    compiled.compile(loss=losses.MulticlassKR(), jit_compile=BACKEND != "torch")
    # Class 0: mean of its positives 0.3; classes 1 and 2: no positive, mean of minus the negatives.
    expected = (0.3 - 3.5 / 3 - (-0.5) / 3) / 3
    assert compiled.evaluate(f, y, batch_size=3, verbose=0) == pytest.approx(expected, rel=1e-5)
    assert _numpy(losses.process_labels_for_multi_gpu(y)) == pytest.approx(np.float32([[1, -1, -1]] * 3))


def test_clipped_hinge_cross_entropy_saves_its_progress(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(9, 5)).astype("float32"), rng.integers(0, 3, 9)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    loss = losses.ClippedHingeCrossEntropy(0.2, ce_weight_start=1.0, ce_weight_end=0.5)
    loss.set_progress(1.0)  # lambda = 0.5
    model.compile("sgd", loss=loss)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert float(_numpy(loaded.loss.ce_weight)) == pytest.approx(0.5)
    assert loaded.evaluate(x, y, verbose=0) == pytest.approx(model.evaluate(x, y, verbose=0), rel=1e-5)


def test_a_loss_saved_without_its_live_argument_asks_to_compile_again(tmp_path):
    scale = LogitScale(initial_value=4.0)
    inputs = keras.Input((5,))
    model = keras.Model(inputs, scale(keras.layers.Dense(3)(inputs)))
    model.compile("sgd", loss=losses.ClippedHingeCrossEntropy(0.2, logit_scale=scale))
    path = tmp_path / "scaled.keras"
    model.save(path)  # saving works; loading with the loss would have silently used s = 1
    with pytest.raises(ValueError, match=r"ClippedHingeCrossEntropy was saved with `logit_scale`.*compile=False"):
        keras.saving.load_model(path)
    loaded = keras.saving.load_model(path, compile=False)
    loaded.compile("sgd", loss=losses.ClippedHingeCrossEntropy(0.2, logit_scale=loaded.layers[-1]))
    head = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    hybrid = losses.HybridIntervalCrossEntropy(head, eps=0.1)
    with pytest.raises(ValueError, match=r"saved with `head`.*hybrid_head"):
        type(hybrid).from_config(hybrid.get_config())


def test_out_of_range_class_indices_never_count_as_well_classified():
    logits = np.float32([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5], [1.0, 1.5, -2.0]])
    labels = np.array([0, 3, 1])  # 3 is no class of three logits (e.g. labels counted from 1)
    for loss in (
        losses.TauSparseCategoricalCrossentropy(1.0, reduction=None),
        losses.LInfDistHinge(0.1, reduction=None),
        losses.ClippedHingeCrossEntropy(0.1, reduction=None),
    ):
        try:
            values = _numpy(loss(labels, logits))
        except Exception as error:  # PyTorch refuses the index outright, TensorFlow's gather too
            sparse = type(loss).__name__ == "TauSparseCategoricalCrossentropy"
            assert BACKEND == "torch" or (BACKEND == "tensorflow" and sparse), error
            continue
        assert np.isnan(values[1]) and np.isfinite(values[[0, 2]]).all(), (type(loss).__name__, values)
    soft = np.float32([[0.9, 0.05, 0.05], [0, 1, 0], [0, 0, 0]])  # soft and empty rows name no single class
    values = _numpy(losses.LInfDistHinge(0.1, reduction=None)(soft, logits))
    assert np.isnan(values[[0, 2]]).all() and np.isfinite(values[1])


@pytest.mark.parametrize("loss_class", [losses.EMMA, losses.LogitAnnealing])
def test_emma_family_is_finite_in_float16(loss_class):
    y = np.float32([[1, 0, 0], [0, 1, 0]])
    f = np.float32([[1.0, 0.5, -0.3], [0.2, 0.1, 0.4]])
    reference = float(_numpy(loss_class(0.5)(y, f)))
    half = float(_numpy(loss_class(0.5, dtype="float16")(y, f)))
    assert np.isfinite(half) and half == pytest.approx(reference, rel=2e-2, abs=2e-3)


def test_lse_hkr_on_one_logit_names_the_shape_and_the_fix():
    with pytest.raises(ValueError, match=r"at least 2 classes.*\(4, 1\).*use HKR"):
        losses.LseHKR()(np.ones((4, 1), "float32"), np.zeros((4, 1), "float32"))


def test_emma_gradient_flows_through_pairwise_constants_as_in_the_reference():
    # hukkai/liresnet's emma_loss detaches only the radius e; margin = lc ||w_y - w_j|| keeps its gradient.
    rng = np.random.default_rng(0)
    n, d, c, eps, lc = 6, 3, 4, 0.5, 1.0
    features = rng.normal(size=(n, d)).astype("float32")
    labels = rng.integers(0, c, n)
    target = np.eye(c, dtype="float32")[labels]
    w0 = rng.normal(size=(d, c)).astype("float32")

    def reference_loss(w):  # numpy, float64, with the reference's detachment (e is a constant)
        logits = features @ w
        relative = logits - logits[np.arange(n), labels][:, None]
        margin = lc * np.linalg.norm(w.T[labels][:, None, :] - w.T[None, :, :], axis=-1) * eps
        radius = np.clip(-relative_at(w0) / np.maximum(margin_at(w0), 1e-8), 0.01, 1.0)
        shifted = relative + radius * margin * (1 - target)
        return np.mean(np.log(np.exp(shifted).sum(-1)) - shifted[np.arange(n), labels])

    def relative_at(w):
        logits = features @ w
        return logits - logits[np.arange(n), labels][:, None]

    def margin_at(w):
        return lc * np.linalg.norm(w.T[labels][:, None, :] - w.T[None, :, :], axis=-1) * eps

    step = 1e-6
    expected = np.zeros_like(w0, dtype=np.float64)
    for index in np.ndindex(w0.shape):
        bump = np.zeros_like(w0, dtype=np.float64)
        bump[index] = step
        expected[index] = (reference_loss(w0 + bump) - reference_loss(w0 - bump)) / (2 * step)

    kernel = [w0]  # the callable reads the kernel being differentiated (a loss makes no variable in a trace)
    loss = losses.EMMA(eps, lipschitz=lambda: losses.dense_pairwise_lipschitz(kernel[0], lc))

    def library_loss(w):
        kernel[0] = w
        return loss(target, keras.ops.matmul(features, w))

    (gradient,) = gradients(library_loss, w0)
    assert np.isfinite(gradient).all()
    np.testing.assert_allclose(gradient, expected, atol=2e-4)
    assert math.isclose(float(_numpy(library_loss(w0))), reference_loss(w0), rel_tol=1e-5)
