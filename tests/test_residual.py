"""LiResNetBlock, ChordDense and LipResidual: certified constants against exact operator norms."""

import keras
import numpy as np
import pytest

from deel_lip_ext import normalizers
from deel_lip_ext.layers import ChordDense, LiResNetBlock, LipResidual, SpectralConv2D, SpectralDense
from deel_lip_ext.spectrum import (
    conv_gram_bound,
    conv_operator_matrix,
    conv_singular_values,
    gram_iteration_bound,
    operator_singular_values,
)
from deel_lip_ext.utils import model_lipschitz_bound
from _backend import to_numpy
from lipschitz_fuzz import jacobian_norm, jacobians


def _exact_block_norm(block, input_shape, padding):
    """Largest singular value of the normalized block at input_shape: float64 SVD of its impulse responses."""
    kernel = keras.ops.convert_to_numpy(block.effective_kernel()).astype(np.float64)
    return operator_singular_values(conv_operator_matrix(kernel, input_shape, padding=padding)).max()


def _exported_operator_norm(layers, input_shape):
    """Exact norm of the exported stock layers' linear map (impulses through the plain model, bias removed)."""
    model = keras.Sequential([keras.Input(input_shape), *layers])
    size = int(np.prod(input_shape))
    impulses = np.eye(size, dtype="float32").reshape((size,) + input_shape)
    zero = keras.ops.convert_to_numpy(model(np.zeros((1,) + input_shape, "float32")))
    matrix = (keras.ops.convert_to_numpy(model(impulses)) - zero).reshape(size, -1)
    return operator_singular_values(matrix).max()


def _trained_block(padding, shape, k=1.0, steps=20, std=0.3, seed=0):
    block = LiResNetBlock(
        3, padding=padding, k_coef_lip=k, kernel_initializer=keras.initializers.RandomNormal(0.0, std, seed=seed)
    )
    x = np.random.default_rng(seed).normal(size=(2,) + shape).astype("float32")
    for _ in range(steps):
        block(x, training=True)
    return block, x


@pytest.mark.parametrize("padding", ["same", "circular"])
@pytest.mark.parametrize("k", [1.0, 2.0])
def test_block_bound_is_the_exact_norm_and_close_to_k(padding, k):
    shape = (8, 8, 4)
    block, _ = _trained_block(padding, shape, k=k, steps=60)
    exact = _exact_block_norm(block, shape, padding)
    bound = block.lipschitz_constant()
    assert bound >= exact * (1 - 1e-9)
    assert bound <= exact * 1.05
    # The power-iteration normalization makes the block about k-Lipschitz once u converged.
    assert abs(exact / k - 1) < 0.05
    # Much tighter than normalizing by 1 + ||W||.
    raw = keras.ops.convert_to_numpy(block.kernel).astype(np.float64)
    w_norm = operator_singular_values(conv_operator_matrix(raw, shape, padding=padding)).max()
    block_kernel = np.asarray(normalizers.residual_conv_kernel(keras.ops.convert_to_tensor(raw, "float64")))
    i_plus_w = operator_singular_values(conv_operator_matrix(block_kernel, shape, padding=padding)).max()
    assert i_plus_w < 1 + w_norm


BLOCK_ADAM_GRID = [
    # (kernel, channels, size, padding, k)
    (3, 4, 6, "same", 1.0),
    (5, 3, 6, "circular", 0.5),
    (1, 2, 5, "same", 5.0),
    (5, 2, 5, "same", 2.0),
    pytest.param(3, 6, 7, "circular", 5.0, marks=pytest.mark.slow),
    pytest.param(5, 5, 8, "same", 1.0, marks=pytest.mark.slow),
    pytest.param(3, 1, 8, "circular", 1.0, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("kernel, channels, size, padding, k", BLOCK_ADAM_GRID)
def test_block_is_k_lipschitz_after_large_adam_steps(kernel, channels, size, padding, k):
    # Adam at lr 0.05 moves W between two calls, and one power iteration from the previous vector then
    # underestimates ||I + W|| (the audit measured blocks 2.7-6.7 % above k): the block divides by an upper bound
    # (Gram iteration at the input size) and its certificate, the float64 exact norm, stays <= k at every step.
    shape = (size, size, channels)
    block = LiResNetBlock(
        kernel, padding=padding, k_coef_lip=k, kernel_initializer=keras.initializers.RandomNormal(0, 0.3, seed=kernel)
    )
    model = keras.Sequential([keras.Input(shape), block])
    model.compile(keras.optimizers.Adam(0.05), "mse")
    rng = np.random.default_rng(kernel * 10 + channels)
    x = rng.normal(size=(4,) + shape).astype("float32")
    for _ in range(3):
        model.train_on_batch(x, rng.normal(size=x.shape).astype("float32"))
        exact = _exact_block_norm(block, shape, padding)
        bound = block.lipschitz_constant()
        assert exact <= bound * (1 + 1e-9) and bound <= exact * 1.05
        assert bound <= k * (1 + 1e-5), (bound, k)
        assert jacobian_norm(jacobians(model, x[:1]), "l2") <= bound * (1 + 1e-5)


def test_bound_on_a_large_zero_padded_input_is_provable_and_within_5_percent():
    # 20 x 20 x 8 = 3200 entries: above the dense-SVD size, the bound is the (n + k - 1) torus symbol.
    shape = (20, 20, 8)
    block, _ = _trained_block("same", shape, steps=30, std=0.2)
    bound = block.lipschitz_constant()
    exact = _exact_block_norm(block, shape, "same")
    assert exact <= bound <= exact * 1.05


def test_block_is_x_plus_conv_and_exports_to_one_conv():
    shape = (6, 6, 3)
    block, x = _trained_block("circular", shape, steps=5)
    raw = keras.ops.convert_to_numpy(block.kernel)
    kernel = keras.ops.convert_to_numpy(block.effective_kernel())
    scale = kernel[0, 0] / raw[0, 0]  # k / sigma, the same for every entry off the centre
    # x + conv(x, W) from stock ops, scaled: the block's function
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="wrap")
    conv = keras.ops.convert_to_numpy(keras.ops.conv(padded, raw, padding="valid"))
    expected = scale[0, 0] * (x + conv) + keras.ops.convert_to_numpy(block.bias)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(block(x)), expected, atol=1e-5)
    exported = block.vanilla_export()
    assert isinstance(exported[-1], keras.layers.Conv2D) and len(exported) == 2  # CircularPadding2D + Conv2D
    np.testing.assert_allclose(to_numpy(keras.Sequential(exported)(x)), to_numpy(block(x)), atol=1e-5)
    assert _exported_operator_norm(exported, shape) <= block.lipschitz_constant() * (1 + 1e-6)


def test_same_padding_block_exports_to_one_conv_and_model_bound_covers_it():
    shape = (6, 6, 4)
    model = keras.Sequential([keras.Input(shape), LiResNetBlock(3, padding="same"), LiResNetBlock(3)])
    x = np.random.default_rng(1).normal(size=(3,) + shape).astype("float32")
    for _ in range(5):
        model(x, training=True)
    for layer in model.layers:
        (conv,) = layer.vanilla_export()
        assert type(conv) is keras.layers.Conv2D
        assert _exported_operator_norm([conv], shape) <= layer.lipschitz_constant() * (1 + 1e-6)
    bound = model_lipschitz_bound(model)
    assert bound == pytest.approx(np.prod([layer.lipschitz_constant() for layer in model.layers]))
    jac = jacobians(model, x)
    assert jacobian_norm(jac, "l2") <= bound * (1 + 1e-5)


def test_block_refusals():
    with pytest.raises(ValueError, match="padding"):
        LiResNetBlock(3, padding="valid")
    with pytest.raises(ValueError, match="kernel_size"):
        LiResNetBlock(2)
    with pytest.raises(ValueError, match="n_power_iterations"):
        LiResNetBlock(3, n_power_iterations=0)
    with pytest.raises(ValueError, match="known height"):
        LiResNetBlock(3).build((None, None, None, 3))
    block = LiResNetBlock(3)
    x = np.random.default_rng(3).normal(size=(1, 5, 5, 2)).astype("float32")
    before, weights = keras.ops.convert_to_numpy(block(x)), block.get_weights()
    block.condense()  # a no-op: the function and the weights stay
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(block(x)), before)
    assert all(np.array_equal(a, b) for a, b in zip(block.get_weights(), weights))
    with pytest.raises(ValueError, match="built for"):
        block(np.zeros((1, 6, 6, 2), "float32"))


def test_block_keras_round_trip(tmp_path):
    shape = (6, 6, 2)
    model = keras.Sequential([keras.Input(shape), LiResNetBlock(3, padding="circular", n_power_iterations=2)])
    x = np.random.default_rng(2).normal(size=(2,) + shape).astype("float32")
    model(x, training=True)
    path = tmp_path / "block.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(to_numpy(loaded(x)), to_numpy(model(x)), atol=1e-6)
    assert loaded.layers[0].n_power_iterations == 2
    assert loaded.layers[0].lipschitz_constant() == pytest.approx(model.layers[0].lipschitz_constant(), rel=1e-6)


@pytest.mark.parametrize("units,n_in", [(5, 12), (12, 5), (7, 7)])
def test_chord_is_orthonormal_and_exports(units, n_in):
    # Well-conditioned raw kernels (a square Gaussian one may have a tiny singular value, see the next test).
    init = "orthogonal" if units == n_in else keras.initializers.RandomNormal(0.0, 1.0, seed=3)
    layer = ChordDense(units, kernel_initializer=init, k_coef_lip=1.0)
    x = np.random.default_rng(3).normal(size=(4, n_in)).astype("float32")
    layer(x)
    kernel = keras.ops.convert_to_numpy(layer.effective_kernel()).astype(np.float64)
    gram = kernel.T @ kernel if units <= n_in else kernel @ kernel.T
    np.testing.assert_allclose(gram, np.eye(min(units, n_in)), atol=1e-5)
    exact = np.linalg.svd(kernel, compute_uv=False).max()
    assert layer.lipschitz_constant() >= exact * (1 - 1e-12)
    (dense,) = layer.vanilla_export()
    assert type(dense) is keras.layers.Dense
    np.testing.assert_allclose(to_numpy(dense(x)), to_numpy(layer(x)), atol=1e-5)


CHORD_ADAM_GRID = [
    # (units, n_in, k)
    (1, 8, 1.0),
    (8, 1, 0.5),
    (16, 16, 1.0),
    (10, 32, 5.0),
    (32, 10, 1.0),
    (64, 64, 0.5),
    (3, 64, 5.0),
    (64, 3, 1.0),
]


@pytest.mark.parametrize("units, n_in, k", CHORD_ADAM_GRID)
def test_chord_certificate_covers_the_exact_norm_after_large_adam_steps(units, n_in, k):
    layer = ChordDense(units, k_coef_lip=k, kernel_initializer=keras.initializers.RandomNormal(0, 1, seed=units))
    model = keras.Sequential([keras.Input((n_in,)), layer])
    model.compile(keras.optimizers.Adam(0.1), "mse")
    rng = np.random.default_rng(units * 100 + n_in)
    x = rng.normal(size=(8, n_in)).astype("float32")
    for _ in range(3):
        model.train_on_batch(x, rng.normal(size=(8, units)).astype("float32"))
        bound = layer.lipschitz_constant()
        (dense,) = layer.vanilla_export()
        exported = np.linalg.svd(keras.ops.convert_to_numpy(dense.kernel).astype(np.float64), compute_uv=False).max()
        assert exported <= bound * (1 + 1e-9)
        assert bound <= k * (1 + 1e-3), (bound, k)
        assert jacobian_norm(jacobians(model, x[:2]), "l2") <= bound * (1 + 1e-5)


@pytest.mark.parametrize("shape", [(64, 64), (96, 64), (64, 96), (256, 128)])
def test_chord_stays_at_most_one_on_an_ill_conditioned_float32_kernel(shape):
    # Condition number 1e3 (1e6 for the Gram matrix): float32 Cholesky alone gives norms up to 1.008.
    rng = np.random.default_rng(0)
    left = np.linalg.qr(rng.normal(size=(shape[0], shape[0])))[0][:, : min(shape)]
    right = np.linalg.qr(rng.normal(size=(shape[1], shape[1])))[0][:, : min(shape)]
    raw = (left * np.geomspace(30.0, 0.03, min(shape))) @ right.T
    kernel = normalizers.chord_orthogonalization(keras.ops.convert_to_tensor(raw, "float32"))
    kernel = keras.ops.convert_to_numpy(kernel)
    assert np.linalg.svd(kernel.astype(np.float64), compute_uv=False).max() <= 1 + 1e-5


def test_chord_ridge_keeps_every_singular_value_below_one():
    # An ill-conditioned raw kernel: the ridge shrinks the small directions, never grows any.
    rotation = np.linalg.qr(np.random.default_rng(7).normal(size=(4, 4)))[0]
    raw = keras.ops.convert_to_tensor(np.diag([1.0, 1.0, 1e-3, 1e-4]) @ rotation, "float32")
    kernel = keras.ops.convert_to_numpy(normalizers.chord_orthogonalization(raw))
    values = np.linalg.svd(kernel.astype(np.float64), compute_uv=False)
    assert values.max() <= 1 + 1e-5
    assert values.min() < 0.5  # the 1e-4 direction: 1e-8 / (1e-8 + 1e-6) of its square


def test_chord_matches_numpy_cholesky_and_round_trips(tmp_path):
    rng = np.random.default_rng(4)
    raw = rng.normal(size=(9, 4))
    p = raw.T
    gram = p @ p.T
    chol = np.linalg.cholesky(gram + 1e-6 * max(1.0, np.diag(gram).mean()) * np.eye(4))
    expected = np.linalg.solve(chol, p).T
    got = keras.ops.convert_to_numpy(normalizers.chord_orthogonalization(keras.ops.convert_to_tensor(raw, "float32")))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    model = keras.Sequential([keras.Input((9,)), ChordDense(4, eps=1e-5, k_coef_lip=2.0)])
    path = tmp_path / "chord.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = rng.normal(size=(3, 9)).astype("float32")
    np.testing.assert_allclose(to_numpy(loaded(x)), to_numpy(model(x)), atol=1e-6)
    assert loaded.layers[0].eps == 1e-5 and loaded.layers[0].lipschitz_constant() == pytest.approx(2.0, rel=1e-4)
    with pytest.raises(ValueError, match="eps"):
        ChordDense(3, eps=0.0)


@pytest.mark.parametrize("scale", [1.0, 1e3, 1e5])
def test_chord_factorizes_a_rank_one_kernel_at_any_scale(scale):
    # Identical columns (rank 1): an absolute ridge of 1e-6 rounds away against a Gram matrix of 1e10
    # and float32 Cholesky returned NaN (JAX) or raised from inside the layer (TensorFlow).
    layer = ChordDense(6)
    x = np.linspace(-1, 1, 12).reshape(2, 6).astype("float32")
    layer(x)
    column = np.linspace(-1, 1, 6).astype("float32")[:, None] * scale
    layer.set_weights([np.tile(column, (1, 6)), np.zeros(6, "float32")])
    outputs = to_numpy(layer(x))
    kernel = keras.ops.convert_to_numpy(layer.effective_kernel()).astype(np.float64)
    assert np.isfinite(outputs).all() and np.isfinite(kernel).all()
    values = np.linalg.svd(kernel, compute_uv=False)
    assert values.max() == pytest.approx(1.0, abs=1e-3)  # the one direction the kernel has
    assert values[1] < 0.05  # the others: shrunk by the ridge, not grown
    assert layer.lipschitz_constant() >= values.max() * (1 - 1e-9)


def test_chord_refuses_a_ridge_below_float32_resolution():
    with pytest.raises(ValueError, match=r"eps=1e-12 is below float32's resolution.*eps >= 1.19e-07"):
        ChordDense(3, eps=1e-12)
    assert ChordDense(3, eps=2e-7).eps == 2e-7


@pytest.mark.parametrize("alpha", [-2.0, 0.0, 1.5])
def test_lip_residual_constant_covers_the_jacobian(alpha):
    shape = (6, 6, 3)
    inner = SpectralConv2D(3, 3, k_coef_lip=2.0, kernel_initializer=keras.initializers.RandomNormal(0, 1, seed=5))
    res = LipResidual(inner, alpha_initializer=alpha)
    model = keras.Sequential([keras.Input(shape), res])
    x = np.random.default_rng(5).normal(size=(3,) + shape).astype("float32")
    share = 1 / (1 + np.exp(-alpha))
    assert res.lipschitz_constant() == pytest.approx(share + (1 - share) * inner.lipschitz_constant(), rel=1e-6)
    assert jacobian_norm(jacobians(model, x), "l2") <= res.lipschitz_constant() * (1 + 1e-5)
    assert model_lipschitz_bound(model) == pytest.approx(res.lipschitz_constant())
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(res(x)), share * x + (1 - share) * keras.ops.convert_to_numpy(inner(x)), atol=1e-5
    )


def test_lip_residual_of_a_stock_layer_round_trip_and_export(tmp_path):
    res = LipResidual(keras.layers.ReLU(), alpha_initializer=0.3)
    inner = SpectralDense(5)
    model = keras.Sequential([keras.Input((5,)), LipResidual(inner), res])
    x = np.random.default_rng(6).normal(size=(4, 5)).astype("float32")
    assert res.lipschitz_constant() == pytest.approx(1.0)
    path = tmp_path / "res.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(to_numpy(loaded(x)), to_numpy(model(x)), atol=1e-6)
    exported = [layer.vanilla_export()[0] for layer in model.layers]
    assert type(exported[0].layer) is keras.layers.Dense
    np.testing.assert_allclose(to_numpy(keras.Sequential(exported)(x)), to_numpy(model(x)), atol=1e-5)
    with pytest.raises(ValueError, match="keeps the shape"):
        LipResidual(keras.layers.Dense(3)).build((None, 5))
    with pytest.raises(ValueError, match="no known|STOCK_LAYERS|lip_const"):
        unknown = LipResidual(keras.layers.Lambda(lambda t: t * 3.0))
        unknown.build((None, 5))
        unknown.lipschitz_constant()


@pytest.mark.parametrize("padding", ["same", "circular"])
def test_adjoint_kernel_is_the_transpose_and_power_iteration_converges_from_below(padding):
    rng = np.random.default_rng(8)
    shape = (7, 7, 3)
    kernel = keras.ops.convert_to_tensor(rng.normal(size=(3, 3, 3, 3)), "float32")
    block = LiResNetBlock(3, padding=padding)
    x, y = (rng.normal(size=(1,) + shape).astype("float32") for _ in range(2))
    forward = keras.ops.convert_to_numpy(block._conv(x, kernel))
    backward = keras.ops.convert_to_numpy(block._conv(y, normalizers.adjoint_conv_kernel(kernel)))
    assert np.sum(forward * y) == pytest.approx(np.sum(x * backward), rel=1e-5)
    exact = operator_singular_values(conv_operator_matrix(np.asarray(kernel, np.float64), shape, padding=padding))[0]
    sigma, _ = normalizers.operator_power_iteration(
        lambda v: block._conv(v, kernel),
        lambda v: block._conv(v, normalizers.adjoint_conv_kernel(kernel)),
        keras.ops.convert_to_tensor(x),
        maxiter=300,
    )
    sigma = float(keras.ops.convert_to_numpy(sigma))
    assert sigma <= exact * (1 + 1e-5) and sigma == pytest.approx(exact, rel=1e-3)


def test_gram_iteration_bounds_the_block_from_above_within_5_percent():
    shape = (8, 8, 4)
    for padding, torus in [("circular", (8, 8)), ("same", (10, 10))]:
        block, _ = _trained_block(padding, shape, steps=10)
        kernel = keras.ops.convert_to_numpy(block.effective_kernel()).astype(np.float64)
        exact = _exact_block_norm(block, shape, padding)
        bounds = [conv_gram_bound(kernel, torus, n_iter) for n_iter in (0, 2, 6)]
        assert all(bound >= exact * (1 - 1e-12) for bound in bounds)
        assert bounds[0] >= bounds[1] >= bounds[2]  # decreasing to the norm
        assert bounds[2] <= exact * 1.05
        if padding == "circular":
            assert bounds[2] == pytest.approx(conv_singular_values(kernel, torus).max(), rel=1e-6)
    # A batch of complex matrices and the overflow rescaling.
    matrices = np.random.default_rng(9).normal(size=(5, 6, 4)) * 1e150 + 1j
    exact = np.linalg.svd(matrices, compute_uv=False).max()
    assert exact <= gram_iteration_bound(matrices, 8) <= exact * (1 + 1e-6)
    with pytest.raises(ValueError, match="n_iter"):
        gram_iteration_bound(matrices, -1)


def test_lip_residual_with_a_sequential_branch_and_its_export():
    shape = (5, 5, 2)
    inner = SpectralConv2D(2, 3, padding="circular", kernel_initializer=keras.initializers.RandomNormal(0, 1, seed=10))
    model = keras.Sequential([keras.Input(shape), LipResidual(inner, alpha_initializer=-1.0)])
    x = np.random.default_rng(10).normal(size=(2,) + shape).astype("float32")
    (exported,) = model.layers[0].vanilla_export()
    assert isinstance(exported.layer, keras.Sequential)  # CircularPadding2D + Conv2D
    plain = keras.Sequential([keras.Input(shape), exported])
    np.testing.assert_allclose(to_numpy(plain(x)), to_numpy(model(x)), atol=1e-5)
    # The export's wrapper is bounded through its Sequential branch (CircularPadding2D's copy count times the
    # conv's norm): an upper bound of the exported function, never below the library layer's own constant.
    exported_bound = model_lipschitz_bound(plain)
    assert exported_bound >= model.layers[0].lipschitz_constant() * (1 - 1e-5)
    assert jacobian_norm(jacobians(plain, x), "l2") <= exported_bound * (1 + 1e-5)
    # A Sequential branch of layers with constants: the product.
    branch = keras.Sequential([keras.Input((6,)), SpectralDense(6, k_coef_lip=3.0), keras.layers.ReLU()])
    res = LipResidual(branch, alpha_initializer=0.5)
    dense_model = keras.Sequential([keras.Input((6,)), res])
    share = 1 / (1 + np.exp(-0.5))
    assert res.lipschitz_constant() == pytest.approx(share + (1 - share) * 3.0, rel=1e-5)
    v = np.random.default_rng(11).normal(size=(3, 6)).astype("float32")
    assert jacobian_norm(jacobians(dense_model, v), "l2") <= res.lipschitz_constant() * (1 + 1e-5)
    functional_input = keras.Input((6,))
    functional = keras.Model(functional_input, keras.layers.ReLU()(functional_input))
    with pytest.raises(ValueError, match="functional model"):
        wrapped = LipResidual(functional)
        wrapped.build((None, 6))
        wrapped.lipschitz_constant()
