"""SLL / CPL residual layers: 1-Lipschitz as whole functions (exact Jacobians, pair search), certificates that
are never below the measured constant (CPL with a stale power-iteration vector included), export, config."""

import keras
import numpy as np
import pytest
from _backend import batch_jacobian, parameter_gradients, to_numpy
from test_layers_lipschitz import _train_a_few_steps

from deel_lip_ext.layers import CPLConv2D, CPLDense, SLLConv2D, SLLDense
from deel_lip_ext.model import vanilla_model
from deel_lip_ext.spectrum import conv_operator_matrix, operator_singular_values
from deel_lip_ext.utils import model_lipschitz_bound


def _jacobian_norm(f, x):
    jacobian = batch_jacobian(f, x[None])[0]
    return np.linalg.norm(jacobian.astype(np.float64), 2)


def _pair_search(f, shape, rng, steps=8):
    """Largest ||f(a) - f(b)|| / ||a - b|| found by gradient ascent from random close pairs."""
    start = rng.normal(size=(8, *shape)).astype("float32")
    a = keras.Variable(start)
    b = keras.Variable(start + 1e-2 * rng.normal(size=start.shape).astype("float32"))
    axes = tuple(range(1, len(shape) + 1))
    optimizer = keras.optimizers.Adam(1e-2)
    best = 0.0

    def objective():
        ops = keras.ops
        ratio = ops.sqrt(ops.sum(ops.square(f(a.value) - f(b.value)), axis=axes)) / ops.sqrt(
            ops.sum(ops.square(a.value - b.value), axis=axes)
        )
        return -ops.sum(ratio), ratio

    for _ in range(steps):
        _, ratio, gradients = parameter_gradients(objective, [a, b])
        best = max(best, float(np.max(to_numpy(ratio))))
        optimizer.apply_gradients(zip(gradients, [a, b]))
    return best


def _measured(layer, shape, rng):
    jac = max(_jacobian_norm(layer, rng.normal(size=shape).astype("float32")) for _ in range(2))
    return max(jac, _pair_search(layer, shape, rng))


def _trained(layer, shape, steps=3):
    model = keras.Sequential([keras.Input(shape), layer])
    _train_a_few_steps(model, steps)
    return model


SLOW = pytest.mark.slow
DENSE_CASES = [(1, 64), (64, 1), (16, 8), pytest.param(1, 1, marks=SLOW), pytest.param(8, 16, marks=SLOW)]
DENSE_CASES.append(pytest.param(32, 32, marks=SLOW))
CONV_CASES = [
    # (channels, filters, kernel, size, padding)
    (1, 1, 1, 5, "same"),
    (1, 8, 3, 5, "circular"),
    pytest.param(3, 16, 3, 5, "same", marks=pytest.mark.slow),
    pytest.param(8, 2, 5, 6, "same", marks=pytest.mark.slow),
    (8, 8, 5, 4, "circular"),
    (16, 64, 3, 4, "same"),
    pytest.param(64, 16, 3, 4, "circular", marks=pytest.mark.slow),
    pytest.param(4, 4, 3, 8, "same", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("cls", [SLLDense, CPLDense])
@pytest.mark.parametrize("d, units", DENSE_CASES)
def test_dense_residual_is_1_lipschitz(cls, d, units):
    rng = np.random.default_rng(d * 100 + units)
    layer = cls(units, kernel_initializer="glorot_normal", bias_initializer=keras.initializers.RandomNormal(0, 0.5))
    _trained(layer, (d,))
    measured = _measured(layer, (d,), rng)
    bound = layer.lipschitz_constant()
    assert measured <= bound * (1 + 1e-4), (measured, bound)
    # CPL divides by an upper bound of ||K|| (not by the power-iteration estimate alone): 1 as well.
    assert bound <= 1 + 1e-5


@pytest.mark.parametrize("cls", [SLLConv2D, CPLConv2D])
@pytest.mark.parametrize("channels, filters, kernel, size, padding", CONV_CASES)
def test_conv_residual_is_1_lipschitz(cls, channels, filters, kernel, size, padding):
    rng = np.random.default_rng(channels * 100 + filters)
    layer = cls(
        filters,
        kernel,
        padding=padding,
        kernel_initializer="glorot_normal",
        bias_initializer=keras.initializers.RandomNormal(0, 0.5),
    )
    shape = (size, size, channels)
    _trained(layer, shape)
    measured = _measured(layer, shape, rng)
    bound = layer.lipschitz_constant()
    assert measured <= bound * (1 + 1e-4), (measured, bound)
    assert measured <= 1 + 1e-4
    assert bound <= 1 + 1e-5


def _exact_p_norm(layer, shape):
    """||P||_2 in float64: SVD of the kernel (dense) or of the explicit conv matrix at the input size."""
    kernel = layer.effective_weights()[0].astype(np.float64)
    if len(shape) == 1:
        return np.linalg.svd(kernel, compute_uv=False).max()
    return operator_singular_values(conv_operator_matrix(kernel, shape, padding=layer.padding)).max()


def _assert_cpl_is_1_lipschitz(layer, shape, rng):
    # The premise of the proof, in float64: s ||P||^2 <= 2 (then the Jacobian I - B D B^T has norm <= 1).
    factor = float(layer.effective_weights()[1][0])
    assert factor * _exact_p_norm(layer, shape) ** 2 <= 2 * (1 + 1e-6)
    bound = layer.lipschitz_constant()
    assert bound <= 1 + 1e-5
    jac = _jacobian_norm(layer, rng.normal(size=shape).astype("float32"))
    assert jac <= bound * (1 + 1e-5), (jac, bound)


CPL_ADAM_CASES = [
    (CPLDense, (32,), 32),
    (CPLDense, (8,), 24),
    (CPLConv2D, (4, 4, 6), 12),
    (CPLConv2D, (5, 5, 3), 8),
    pytest.param(CPLConv2D, (6, 6, 8), 24, marks=SLOW),
    pytest.param(CPLDense, (64,), 16, marks=SLOW),
]


@pytest.mark.parametrize("cls, shape, units", CPL_ADAM_CASES)
def test_cpl_is_1_lipschitz_after_large_adam_steps(cls, shape, units):
    # Adam at lr 0.1 moves the kernel far between two calls: one power iteration from the previous vector
    # underestimates ||P|| (the audit measured 1.40-2.41 on the layer dividing by it); the layer divides by an
    # upper bound instead and stays 1-Lipschitz after every step.
    rng = np.random.default_rng(len(shape) * 10 + units)
    kwargs = {"padding": "same" if shape[0] % 2 else "circular"} if cls is CPLConv2D else {}
    layer = cls(
        units,
        kernel_initializer="glorot_normal",
        bias_initializer=keras.initializers.RandomNormal(0, 0.5),
        **({"kernel_size": 3} if cls is CPLConv2D else {}),
        **kwargs,
    )
    model = keras.Sequential([keras.Input(shape), layer])
    model.compile(keras.optimizers.Adam(0.1), "mse")
    x = rng.normal(size=(8, *shape)).astype("float32")
    underestimated = 0.0
    for _ in range(4):
        model.train_on_batch(x, rng.normal(size=x.shape).astype("float32"))
        estimate = float(keras.ops.convert_to_numpy(layer._power_iteration(layer.power_iterations)[0]))
        underestimated = max(underestimated, _exact_p_norm(layer, shape) / estimate)
        _assert_cpl_is_1_lipschitz(layer, shape, rng)
    assert underestimated > 1.001, "the test should exercise a stale power-iteration vector"


@pytest.mark.parametrize("cls, shape", [(CPLDense, (6,)), (CPLConv2D, (5, 5, 2))])
def test_cpl_does_not_trust_a_stale_power_iteration(cls, shape):
    # A kernel changed by hand after build: the persistent vector is stale and one iteration underestimates
    # ||W|| (checked), yet the layer divides by an upper bound and its certificate (exact float64 norm) is 1.
    rng = np.random.default_rng(0)
    layer = cls(4, kernel_initializer="glorot_normal") if cls is CPLDense else cls(4, 3)
    layer.build((None, *shape))
    worst_ratio = 0.0
    for _ in range(5):
        layer.kernel.assign(rng.normal(size=layer.kernel.shape).astype("float32") * rng.uniform(0.1, 10))
        estimate = float(keras.ops.convert_to_numpy(layer._power_iteration(1)[0]))
        worst_ratio = max(worst_ratio, _exact_p_norm(layer, shape) / estimate)
        measured = _measured(layer, shape, rng)
        bound = layer.lipschitz_constant()
        assert measured <= bound * (1 + 1e-4), (measured, bound)
        _assert_cpl_is_1_lipschitz(layer, shape, rng)
    assert worst_ratio > 1.01, "the test should exercise a layer with an underestimated norm"


def _residual_model(functional):
    inputs = keras.Input((6, 6, 3))
    x = SLLConv2D(8, 3, name="sll")(inputs)
    x = CPLConv2D(4, 3, padding="circular", name="cpl")(x)
    x = keras.layers.Flatten()(x)
    if functional:
        skip = keras.layers.Flatten()(inputs)
        x = keras.layers.Concatenate()([x, skip])
        x = CPLDense(5, name="cpl_dense")(x)
        outputs = SLLDense(7, name="sll_dense")(x)
        return keras.Model(inputs, outputs)
    return keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            SLLConv2D(8, 3),
            CPLConv2D(4, 3, padding="circular"),
            keras.layers.Flatten(),
            CPLDense(5),
            SLLDense(7),
        ]
    )


@pytest.mark.parametrize("functional", [False, True])
def test_export_parity_and_keras_round_trip(functional, tmp_path):
    model = _residual_model(functional)
    _train_a_few_steps(model)
    x = np.random.default_rng(2).normal(size=(4, 6, 6, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(x))
    exported = vanilla_model(model)
    stock = [lay for block in exported.layers for lay in getattr(block, "layers", [block])]
    # Stock layers only (CircularPadding2D: the library's export of circular padding, as for SpectralConv2D).
    allowed = ("keras", "deel_lip_ext.layers.padding")
    assert all(type(lay).__module__.startswith(allowed) for lay in stock), [type(lay) for lay in stock]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(exported(x)), expected, atol=1e-5)
    model.save(tmp_path / "residual.keras")
    loaded = keras.models.load_model(tmp_path / "residual.keras")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), expected, atol=1e-6)
    # The model's bound: the product of the layers' certificates (the concat doubles nothing: sqrt(2) for two paths).
    bound = model_lipschitz_bound(model)
    assert _jacobian_norm(model, x[0]) <= bound * (1 + 1e-4)


def test_residual_layers_refuse_bad_arguments_and_linf():
    with pytest.raises(ValueError, match="odd"):
        SLLConv2D(4, 2)
    with pytest.raises(ValueError, match="padding"):
        CPLConv2D(4, 3, padding="valid")
    with pytest.raises(ValueError, match="eps"):
        SLLDense(4, eps=0.0)
    with pytest.raises(ValueError, match="power_iterations"):
        CPLDense(4, power_iterations=0)
    with pytest.raises(ValueError, match="units"):
        SLLDense(0)
    with pytest.raises(ValueError, match="spatial"):
        CPLConv2D(4, 3).build((None, None, None, 2))
    layer = SLLDense(4)
    layer.build((None, 3))
    with pytest.raises(ValueError, match="l2"):
        layer.lipschitz_constant("linf")


@pytest.mark.parametrize("layer", [SLLDense(3, eps=1e-3), CPLConv2D(4, 5, padding="circular", power_iterations=2)])
def test_residual_config_round_trip(layer):
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


def test_sll_conv_built_for_every_size_is_certified_at_every_size():
    # Unknown spatial size: the certificate comes from the weighted Gershgorin bound (no input size needed).
    rng = np.random.default_rng(3)
    layer = SLLConv2D(6, 3, kernel_initializer="glorot_normal")
    layer.build((None, None, None, 3))
    layer.log_q.assign(rng.normal(size=6).astype("float32"))
    assert layer.lipschitz_constant() <= 1 + 1e-5
    for size in (3, 6):
        assert layer.lipschitz_constant(input_shape=(None, size, size, 3)) <= 1 + 1e-5
        assert _jacobian_norm(layer, rng.normal(size=(size, size, 3)).astype("float32")) <= 1 + 1e-4


@pytest.mark.slow
def test_soundness_fuzzer_on_models_with_the_modern_layers():
    import lipschitz_fuzz

    from deel_lip_ext import layers as lip

    mine = (lip.AOLDense, lip.AOLConv2D, lip.SLLDense, lip.SLLConv2D, lip.CPLDense, lip.CPLConv2D)

    def uses_mine(model):
        stack = list(model.layers)
        while stack:
            layer = stack.pop()
            if isinstance(layer, mine):
                return True
            stack += list(getattr(layer, "layers", []))
        return False

    checked, bounded = 0, 0
    for seed in range(2000, 4000):
        model = lipschitz_fuzz.random_model(seed)
        if uses_mine(model):
            for outcome in lipschitz_fuzz.check_model(model, ("l2", "linf"), seed):
                assert not outcome.violated, outcome
                bounded += outcome.bound is not None
            checked += 1
        keras.backend.clear_session(free_memory=False)
        if checked >= 20:
            break
    assert checked >= 20 and bounded >= 10


@pytest.mark.parametrize("shape", [(5, 7), (3, 3, 4, 6), (1, 3, 2, 5)])
def test_certificate_row_sums_are_the_gram_row_sums_in_float64(shape):
    # The certificate's numpy float64 twin of `gram_row_sums` (Keras computes float64 in float32 on
    # JAX and torch) must be the same function.
    from deel_lip_ext.layers.sll_cpl import _gram_row_sums_float64
    from deel_lip_ext.parametrizations import gram_row_sums

    rng = np.random.default_rng(0)
    kernel = rng.normal(size=shape)
    weights = np.exp(rng.normal(size=shape[-2]))
    for w in (None, weights):
        expected = gram_row_sums(
            keras.ops.convert_to_tensor(kernel.astype("float32")),
            None if w is None else keras.ops.convert_to_tensor(w.astype("float32")),
        )
        np.testing.assert_allclose(_gram_row_sums_float64(kernel, w), keras.ops.convert_to_numpy(expected), rtol=1e-5)
