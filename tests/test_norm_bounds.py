"""Gram-iteration norm bounds (keras.ops): never below the float64 exact norm, close to it, no gradient leak."""

import keras
import numpy as np
import pytest

from deel_lip_ext.parametrizations import (
    conv_norm_bound,
    dense_norm_bound,
    gram_norm_bound,
    max_gram_norm_bound,
    upper_bounded_estimate,
)
from deel_lip_ext.parametrizations.norm_bounds import FLOAT32_MARGIN, _half_torus_dft
from deel_lip_ext.spectrum import conv_operator_matrix, operator_singular_values


@pytest.mark.parametrize("shape", [(16, 8), (8, 16), (1, 5), (5, 1), (32, 32)])
def test_dense_bound_is_above_the_norm_and_close(shape):
    kernel = np.random.default_rng(sum(shape)).normal(size=shape).astype("float32")
    exact = np.linalg.svd(kernel.astype(np.float64), compute_uv=False).max()
    bound = float(keras.ops.convert_to_numpy(dense_norm_bound(kernel)))
    assert exact <= bound * (1 + FLOAT32_MARGIN)
    assert bound <= exact * min(shape) ** (1 / 256) * (1 + 1e-5)


def test_complex_batch_and_equal_singular_values():
    rng = np.random.default_rng(1)
    real, imag = rng.normal(size=(2, 4, 5, 3))
    exact = np.linalg.svd(real + 1j * imag, compute_uv=False).max(axis=-1)
    bounds = keras.ops.convert_to_numpy(gram_norm_bound(real, imag))
    assert np.all(exact <= bounds * (1 + FLOAT32_MARGIN)) and np.all(bounds <= exact * 3 ** (1 / 256) * (1 + 1e-5))
    # Worst case of the Gram iteration: all singular values equal (factor m^(1 / 2^(n_iter + 2))).
    identity = np.eye(6, dtype="float32") * 3.0
    assert float(keras.ops.convert_to_numpy(gram_norm_bound(identity, n_iter=2))) == pytest.approx(3.0 * 6**0.0625)


CONV_CASES = [
    # (kernel, c_in, c_out, size, padding)
    (3, 2, 4, 5, "same"),
    (3, 4, 2, 5, "circular"),
    (5, 3, 3, 4, "same"),
    (5, 3, 3, 3, "circular"),  # the kernel wraps around the torus (folded taps)
    (1, 2, 3, 4, "same"),
    (3, 3, 3, 2, "circular"),
    (3, 4, 4, 12, "same"),  # 112 frequencies: only the largest coarse bounds are refined (max_gram_norm_bound)
    (3, 4, 4, 12, "circular"),
    # "same" bounds by the (n + k // 2) torus: taps that wrap around it, a torus smaller than the kernel
    (5, 2, 2, 2, "same"),
    (7, 2, 3, 3, "same"),
    (3, 3, 3, 1, "same"),
    (2, 3, 2, 4, "same"),  # even kernel: one more padded row after than before
    (4, 2, 3, 3, "same"),
]


@pytest.mark.parametrize("kernel_size, c_in, c_out, size, padding", CONV_CASES)
def test_conv_bound_is_above_the_exact_operator_norm(kernel_size, c_in, c_out, size, padding):
    rng = np.random.default_rng(kernel_size * 100 + size)
    kernel = rng.normal(size=(kernel_size, kernel_size, c_in, c_out)).astype("float32")
    matrix = conv_operator_matrix(kernel.astype(np.float64), (size, size, c_in), padding=padding)
    exact = operator_singular_values(matrix).max()
    bound = float(keras.ops.convert_to_numpy(conv_norm_bound(kernel, (size, size), padding)))
    assert exact <= bound * (1 + FLOAT32_MARGIN)
    if padding == "circular":  # exact up to the Gram iteration's factor
        assert bound <= exact * min(c_in, c_out) ** (1 / 256) * (1 + 1e-5)
    with pytest.raises(ValueError, match="padding"):
        conv_norm_bound(kernel, (size, size), "valid")


@pytest.mark.parametrize("size", [2, 3, 6])
def test_same_padding_bound_holds_for_a_kernel_that_cancels_on_a_smaller_torus(size):
    """Taps 1, 0, -1 cancel when folded onto a torus of period 2 (one smaller than n + k // 2 at n = 2)."""
    taps = np.array([1.0, 0.0, -1.0], dtype="float32")
    kernel = (taps[:, None] * np.ones(3, dtype="float32")[None, :]).reshape(3, 3, 1, 1)
    matrix = conv_operator_matrix(kernel.astype(np.float64), (size, size, 1), padding="same")
    exact = operator_singular_values(matrix).max()
    bound = float(keras.ops.convert_to_numpy(conv_norm_bound(kernel, (size, size), "same")))
    assert exact > 0.5 and exact <= bound * (1 + FLOAT32_MARGIN)


TORI = [((3, 3), (33, 33)), ((5, 3), (4, 7)), ((7, 7), (3, 3)), ((1, 2), (5, 1))]


@pytest.mark.parametrize("kernel_size, torus", TORI)
def test_torus_spectra_are_the_fft_of_the_wrapped_kernel(kernel_size, torus):
    """`conv_norm_bound`'s spectra (a matmul by DFT tables) are numpy's FFT of the kernel folded onto the torus."""
    rng = np.random.default_rng(kernel_size[0] + torus[0])
    kernel = rng.normal(size=(*kernel_size, 2, 3))
    folded = np.zeros((*torus, 2, 3))
    for a in range(kernel_size[0]):
        for b in range(kernel_size[1]):
            folded[a % torus[0], b % torus[1]] += kernel[a, b]
    expected = np.fft.fft2(folded, axes=(0, 1))[: torus[0] // 2 + 1].reshape(-1, 2 * 3)
    cosines, sines = _half_torus_dft(kernel_size, torus)
    taps = kernel.reshape(-1, 2 * 3)
    np.testing.assert_allclose(cosines @ taps + 1j * (sines @ taps), expected, atol=1e-5)


@pytest.mark.parametrize("spread", [True, False])
def test_max_gram_bound_is_the_max_of_the_full_bounds(spread):
    rng = np.random.default_rng(7)
    real, imag = rng.normal(size=(2, 120, 8, 8)).astype("float32")
    if spread:  # well separated norms: the refined branch
        real, imag = (part * np.linspace(0.5, 1.0, 120, dtype="float32")[:, None, None] for part in (real, imag))
    else:  # 120 unitary matrices (all singular values 1): every coarse bound ties, every matrix is refined
        unitary = np.linalg.qr(real + 1j * imag)[0]
        real, imag = unitary.real.astype("float32"), unitary.imag.astype("float32")
    full = keras.ops.convert_to_numpy(gram_norm_bound(real, imag))
    coarse = np.sort(keras.ops.convert_to_numpy(gram_norm_bound(real, imag, n_iter=3)))[::-1]
    assert (coarse[30] <= full.max()) == spread  # 30 = the refined count (a quarter of 120): the branch under test
    bound = float(keras.ops.convert_to_numpy(max_gram_norm_bound(real, imag)))
    assert bound == pytest.approx(full.max(), rel=1e-6)
    exact = np.linalg.svd(real.astype(np.float64) + 1j * imag, compute_uv=False).max()
    assert exact <= bound * (1 + FLOAT32_MARGIN)


def test_upper_bounded_estimate_value_and_gradient():
    import tensorflow as tf

    estimate = tf.Variable(0.9)
    with tf.GradientTape() as tape:
        value = upper_bounded_estimate(estimate * 2.0, tf.constant(3.0))
    assert float(value) == pytest.approx(3.0 * (1 + FLOAT32_MARGIN))
    assert float(tape.gradient(value, estimate)) == pytest.approx(2.0)  # the estimate's gradient only
    assert float(upper_bounded_estimate(tf.constant(5.0), tf.constant(3.0))) == pytest.approx(5.0)
