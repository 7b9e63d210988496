"""Every layer family trains, infers and exports under mixed_float16 and mixed_bfloat16, and its bound holds.

Parametrizations run in float32; the layer multiplies with that kernel rounded to the compute dtype, and
`effective_kernel()` is that rounded kernel, so the bound computed from it holds for the exported operator.
"""

import keras
import numpy as np
import pytest
from keras.src.backend import AutocastScope  # no public name: the scope Layer.__call__ enters

from deel_lip_ext.layers import (
    BatchCentering,
    ChordDense,
    LayerCentering,
    LiResNetBlock,
    LipResidual,
    AOLConv2D,
    AOLDense,
    CPLConv2D,
    CPLDense,
    SLLConv2D,
    SLLDense,
    AOCConv2D,
    AOCConv2DTranspose,
    BCOPConv2D,
    BjorckDense,
    CircularPadding2D,
    CReLU,
    FrobeniusConv2D,
    FrobeniusDense,
    FullSort,
    GroupSort2,
    GroupSort2L2NormPooling2D,
    Householder,
    InvertibleDownSampling,
    InvertibleUpSampling,
    LInfDistConv2D,
    LInfDistDense,
    LogitScale,
    MaxMin,
    OSSNConv2D,
    PadConv2D,
    Padding2D,
    RKOConv2D,
    ScaledAveragePooling2D,
    ScaledGlobalAveragePooling2D,
    ScaledGlobalL2NormPooling2D,
    ScaledL2NormPooling2D,
    SpectralConv1D,
    SpectralConv2D,
    SpectralConv2DTranspose,
    SpectralDense,
    SVCMConv2D,
)
from deel_lip_ext.model import vanilla_model
from deel_lip_ext.spectrum import conv_operator_matrix
from deel_lip_ext.utils import model_lipschitz_bound

POLICIES = ["mixed_float16", "mixed_bfloat16"]
# Machine epsilon (spacing of 1) of each compute dtype.
EPSILON = {"float16": 2.0**-10, "bfloat16": 2.0**-7}

DENSE_INPUT, CONV_INPUT = (8,), (6, 6, 2)
KERNEL_LAYERS = {
    "SpectralDense": (DENSE_INPUT, lambda: SpectralDense(6, kernel_initializer="glorot_uniform")),
    "FrobeniusDense": (DENSE_INPUT, lambda: FrobeniusDense(6, disjoint_neurons=False)),
    "BjorckDense": (DENSE_INPUT, lambda: BjorckDense(6)),
    "SpectralConv2D": (CONV_INPUT, lambda: SpectralConv2D(3, 3, padding="same", kernel_initializer="glorot_uniform")),
    "FrobeniusConv2D": (CONV_INPUT, lambda: FrobeniusConv2D(3, 3, padding="valid")),
    "BCOPConv2D": (CONV_INPUT, lambda: BCOPConv2D(4, 2)),
    "AOCConv2D": (CONV_INPUT, lambda: AOCConv2D(4, 3)),
    "AOCConv2DTranspose": (CONV_INPUT, lambda: AOCConv2DTranspose(4, 3, padding="same")),
    "OSSNConv2D": (CONV_INPUT, lambda: OSSNConv2D(3, 3, padding="same")),
    "RKOConv2D": (CONV_INPUT, lambda: RKOConv2D(3, 3)),
    "SVCMConv2D": (CONV_INPUT, lambda: SVCMConv2D(3, 3)),
    "LiResNetBlock": (CONV_INPUT, lambda: LiResNetBlock(3, padding="circular")),
    "ChordDense": (DENSE_INPUT, lambda: ChordDense(6, kernel_initializer="glorot_uniform")),
    "AOLDense": (DENSE_INPUT, lambda: AOLDense(6, kernel_initializer="glorot_uniform")),
    "AOLConv2D": (CONV_INPUT, lambda: AOLConv2D(3, 3, padding="circular", kernel_initializer="glorot_uniform")),
    "PadConv2D": (CONV_INPUT, lambda: PadConv2D(3, 3, padding="reflect")),
    "SpectralConv2DTranspose": (CONV_INPUT, lambda: SpectralConv2DTranspose(3, 3)),
    "SpectralConv1D": ((6, 2), lambda: SpectralConv1D(3, 3, padding="same")),
}
OTHER_LAYERS = {
    "LInfDistDense": (DENSE_INPUT, lambda: LInfDistDense(6)),
    "LInfDistConv2D": (CONV_INPUT, lambda: LInfDistConv2D(3, 3)),
    "LogitScale": (DENSE_INPUT, lambda: LogitScale()),
    "GroupSort2": (DENSE_INPUT, lambda: GroupSort2()),
    "FullSort": (DENSE_INPUT, lambda: FullSort()),
    "MaxMin": (DENSE_INPUT, lambda: MaxMin()),
    "CReLU": (DENSE_INPUT, lambda: CReLU()),
    "Householder": (DENSE_INPUT, lambda: Householder()),
    "ScaledAveragePooling2D": (CONV_INPUT, lambda: ScaledAveragePooling2D(2)),
    "ScaledL2NormPooling2D": (CONV_INPUT, lambda: ScaledL2NormPooling2D(2)),
    "GroupSort2L2NormPooling2D": ((6, 6, 4), lambda: GroupSort2L2NormPooling2D(2, sort_k_coef_lip=0.5)),
    "ScaledGlobalAveragePooling2D": (CONV_INPUT, lambda: ScaledGlobalAveragePooling2D()),
    "ScaledGlobalL2NormPooling2D": (CONV_INPUT, lambda: ScaledGlobalL2NormPooling2D()),
    "InvertibleDownSampling": (CONV_INPUT, lambda: InvertibleDownSampling(2)),
    "InvertibleUpSampling": ((3, 3, 8), lambda: InvertibleUpSampling(2)),
    "LayerCentering": (CONV_INPUT, lambda: LayerCentering()),
    "BatchCentering": (CONV_INPUT, lambda: BatchCentering()),
    "LipResidual": (DENSE_INPUT, lambda: LipResidual(SpectralDense(8))),
    "SLLDense": (DENSE_INPUT, lambda: SLLDense(6)),
    "SLLConv2D": (CONV_INPUT, lambda: SLLConv2D(3, 3)),
    "CPLDense": (DENSE_INPUT, lambda: CPLDense(6)),
    "CPLConv2D": (CONV_INPUT, lambda: CPLConv2D(3, 3, padding="circular")),
    "Padding2D": (CONV_INPUT, lambda: Padding2D(1, mode="symmetric")),
}


def policy_rotation(names):
    """(policy, name) cases: each name under one policy in the fast suite, alternating along the sorted names so
    both policies meet every kind of layer there; the other policy of each name runs with the slow tests (CI runs
    the full product)."""
    return [
        pytest.param(policy, name, marks=[pytest.mark.slow] if (index + column) % 2 else [], id=f"{policy}-{name}")
        for index, name in enumerate(names)
        for column, policy in enumerate(POLICIES)
    ]


@pytest.fixture(params=POLICIES)
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    try:
        yield keras.mixed_precision.global_policy()
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _trained(input_shape, make_layer, seed=0):
    """A one-layer model (LogitScale after an l_inf-dist layer, which it needs) trained one epoch."""
    layers = [LInfDistDense(6), make_layer()] if isinstance(make_layer(), LogitScale) else [make_layer()]
    model = keras.Sequential([keras.Input(input_shape), *layers])
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(16, *input_shape)).astype("float32")
    y = rng.normal(size=(16, *model.output_shape[1:])).astype("float32")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    return model, x


def _rounded(values, dtype):
    """`values` rounded to `dtype`, back in float64."""
    return keras.ops.convert_to_numpy(keras.ops.cast(keras.ops.cast(values, dtype), "float32")).astype(np.float64)


def _check_runs_and_export_matches(model, x, compute_dtype):
    out = model.predict(x, verbose=0)
    assert keras.backend.standardize_dtype(out.dtype) == compute_dtype
    out = out.astype(np.float64)
    assert np.isfinite(out).all()
    exported = vanilla_model(model).predict(x, verbose=0).astype(np.float64)
    # The export runs the same ops on the same rounded weights: equal up to a few roundings of the output.
    np.testing.assert_allclose(exported, out, rtol=0, atol=4 * EPSILON[compute_dtype] * max(1.0, np.abs(out).max()))
    return out


def _conv_operator(x, kernel, padding):
    """Stride-1 correlation of a batch x (N, H, W, C) by kernel (kh, kw, C, O) after `padding`, in float64."""
    (kh, kw, _, _), (height, width) = kernel.shape, x.shape[1:3]
    out = np.zeros((x.shape[0], height - kh + 1, width - kw + 1, kernel.shape[-1]))
    for a in range(kh):
        for b in range(kw):
            out += np.einsum("nhwc,co->nhwo", x[:, a : a + out.shape[1], b : b + out.shape[2], :], kernel[a, b])
    return out


def _exported_operator_norm(exported_layers, input_shape):
    """Exact L2 norm of the linear part of the exported layers, from their float32 weights (impulse responses)."""
    size = int(np.prod(input_shape))
    x = np.eye(size).reshape((size, *input_shape))
    for layer in exported_layers:
        if isinstance(layer, CircularPadding2D):
            x = np.pad(x, ((0, 0), *layer.padding, (0, 0)), mode="wrap")
        elif isinstance(layer, Padding2D):
            x = np.pad(x, ((0, 0), *layer.padding, (0, 0)), mode=layer.mode)
        elif isinstance(layer, keras.layers.Conv1D):
            # A stride-1 "same" 1-D correlation: the 2-D one on (1, L) inputs with a (1, k) kernel.
            assert tuple(layer.strides) == (1,) and layer.padding == "same"
            kernel = keras.ops.convert_to_numpy(layer.kernel).astype(np.float64)[None]
            k = kernel.shape[1]
            x = np.pad(x[:, None], ((0, 0), (0, 0), ((k - 1) // 2, k - 1 - (k - 1) // 2), (0, 0)))
            x = _conv_operator(x, kernel, "valid")
        elif isinstance(layer, keras.layers.Conv2DTranspose):
            # Stride 1, "same", odd kernel: the correlation with the spatially flipped kernel, channels swapped.
            assert tuple(layer.strides) == (1, 1) and layer.padding == "same"
            kernel = keras.ops.convert_to_numpy(layer.kernel).astype(np.float64)
            assert all(k % 2 for k in kernel.shape[:2])
            x = np.pad(x, ((0, 0), *[(k // 2, k // 2) for k in kernel.shape[:2]], (0, 0)))
            x = _conv_operator(x, kernel[::-1, ::-1].transpose(0, 1, 3, 2), "valid")
        elif isinstance(layer, keras.layers.Conv2D):
            assert tuple(layer.strides) == (1, 1)
            kernel = keras.ops.convert_to_numpy(layer.kernel).astype(np.float64)
            if layer.padding == "same":
                pads = [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel.shape[:2]]
                x = np.pad(x, ((0, 0), *pads, (0, 0)))
            x = _conv_operator(x, kernel, layer.padding)
        else:
            assert isinstance(layer, keras.layers.Dense)
            x = x @ keras.ops.convert_to_numpy(layer.kernel).astype(np.float64)
    return np.linalg.norm(x.reshape(size, -1), 2)


@pytest.mark.parametrize("policy, name", policy_rotation(sorted(KERNEL_LAYERS)), indirect=["policy"])
def test_kernel_layer_trains_infers_exports_and_its_bound_holds(name, policy):
    input_shape, make_layer = KERNEL_LAYERS[name]
    model, x = _trained(input_shape, make_layer)
    layer, compute_dtype = model.layers[0], policy.compute_dtype
    assert all(keras.backend.standardize_dtype(v.dtype) == "float32" for v in layer.weights)

    # The effective kernel is the float32 parametrization rounded to the compute dtype, as float32.
    kernel = keras.ops.convert_to_numpy(layer.effective_kernel())
    assert kernel.dtype == np.float32
    float32_kernel = keras.ops.convert_to_numpy(layer.compute_kernel()[0]).astype(np.float64)
    np.testing.assert_array_equal(kernel, _rounded(float32_kernel, compute_dtype))

    out = _check_runs_and_export_matches(model, x, compute_dtype)
    exported = layer.vanilla_export()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(exported[-1].kernel), kernel)
    norm = _exported_operator_norm(exported, input_shape)
    bound = model_lipschitz_bound(model)
    # Both are exact norms of the same float32 matrix, in different float arithmetic.
    assert norm <= bound * (1 + 1e-6), (norm, bound)
    assert norm > 0.5 * bound

    if isinstance(layer, (SpectralDense, FrobeniusDense, BjorckDense)):
        # The layer computes x @ K + b in the compute dtype on the rounded input: elementwise error at most
        # gamma_(n+1) (|x| @ |K| + |b|), gamma_m = m u / (1 - m u), u = eps / 2 (Higham, Thm 3.5).
        inputs = _rounded(x, compute_dtype)
        bias = keras.ops.convert_to_numpy(layer.bias).astype(np.float64)
        expected = inputs @ kernel.astype(np.float64) + _rounded(bias, compute_dtype)
        m, u = input_shape[0] + 2, EPSILON[compute_dtype] / 2
        tolerance = m * u / (1 - m * u) * (np.abs(inputs) @ np.abs(kernel) + np.abs(bias)) + u * np.abs(expected)
        assert (np.abs(out - expected) <= tolerance).all()


@pytest.mark.parametrize("policy, name", policy_rotation(sorted(OTHER_LAYERS)), indirect=["policy"])
def test_kernel_free_layer_trains_infers_and_exports(name, policy):
    input_shape, make_layer = OTHER_LAYERS[name]
    model, x = _trained(input_shape, make_layer)
    if name == "Householder":
        # Its export (a fresh copy from the config) does not carry the trained theta: checked at inference only.
        out = model.predict(x, verbose=0)
        assert keras.backend.standardize_dtype(out.dtype) == policy.compute_dtype
        assert np.isfinite(out.astype(np.float64)).all()
        return
    _check_runs_and_export_matches(model, x, policy.compute_dtype)


def test_linf_distance_is_the_rounded_inputs_distance(policy):
    layer = LInfDistDense(5, mean_shift=False, use_bias=False, identity_init=False)
    model = keras.Sequential([keras.Input((7,)), layer])
    x = np.random.default_rng(1).uniform(-2, 2, size=(9, 7)).astype("float32")
    out = model.predict(x, verbose=0).astype(np.float64)
    dtype = policy.compute_dtype
    inputs, centres = _rounded(x, dtype), _rounded(keras.ops.convert_to_numpy(layer.kernel), dtype)
    expected = np.abs(inputs[:, :, None] - centres[None, :, :]).max(axis=1)
    # Computed in float32 and rounded once to the compute dtype.
    np.testing.assert_allclose(out, expected, rtol=EPSILON[dtype], atol=0)


def test_raw_state_is_read_in_float32_under_autocast(policy):
    """The parametrization sees the float32 raw kernel, not a copy rounded to the compute dtype."""
    layer = FrobeniusDense(3, disjoint_neurons=False)
    model = keras.Sequential([keras.Input((4,)), layer])
    raw = np.ones((4, 3))
    raw[0, 0] = 1.0 + 2.0**-12  # 1 in float16 and bfloat16
    layer.kernel.assign(raw.astype("float32"))
    with AutocastScope(policy.compute_dtype):  # what a call sees: autocast variables in the compute dtype
        kernel = keras.ops.convert_to_numpy(layer.compute_kernel()[0]).astype(np.float64)
    np.testing.assert_allclose(kernel, raw / np.linalg.norm(raw), rtol=1e-6)
    assert model.predict(np.zeros((1, 4), "float32"), verbose=0).shape == (1, 3)


RESIDUAL_LAYERS = ("SLLDense", "SLLConv2D", "CPLDense", "CPLConv2D")


def _residual_jacobian(layer, x):
    """Jacobian of x - P^T (s * relu(P x + b)) at x in float64, from the effective (rounded) weights."""
    kernel, factor = (w.astype(np.float64) for w in layer.effective_weights())
    shape = x.shape
    if len(shape) == 1:
        p = kernel.T
    else:
        p = conv_operator_matrix(kernel, shape, padding=layer.padding).T  # rows: hidden entries
    hidden = p @ x.reshape(-1)  # (positions, units) flattened, units fastest
    copies = hidden.size // factor.size
    bias = 0.0 if layer.bias is None else np.tile(keras.ops.convert_to_numpy(layer.bias).astype(np.float64), copies)
    active = (hidden + bias > 0).astype(np.float64)
    scale = np.tile(factor, copies) * active
    return np.eye(p.shape[1]) - p.T @ (scale[:, None] * p)


@pytest.mark.parametrize(
    "policy, name",
    policy_rotation(RESIDUAL_LAYERS + ("LipResidual", "LayerCentering", "BatchCentering")),
    indirect=["policy"],
)
def test_residual_and_centering_bounds_hold_under_mixed_precision(name, policy):
    input_shape, make_layer = OTHER_LAYERS[name]
    if name == "LipResidual":  # a branch of constant 3: the rounding of the share to the compute dtype matters
        make_layer = lambda: LipResidual(keras.layers.Rescaling(3.0))  # noqa: E731
    model, x = _trained(input_shape, make_layer)
    layer, eps = model.layers[0], EPSILON[policy.compute_dtype]
    bound = model_lipschitz_bound(model)
    if name in RESIDUAL_LAYERS:
        # The certificate is the float64 norm bound of the rounded weights: the exact Jacobians of the function
        # with those weights stay below it, and rounding s and K costs at most a few units of the compute dtype.
        assert bound <= 1 + 4 * eps, bound
        for point in _rounded(x[:3], policy.compute_dtype):
            assert np.linalg.norm(_residual_jacobian(layer, point), 2) <= bound * (1 + 1e-9)
    elif name == "LipResidual":
        # s x + (1 - s) W x with s and 1 - s as the layer computes them (rounded to the compute dtype). At
        # alpha = -1.3, float16 gives s + (1 - s) 3 about 3e-4 above its float64 value (s rounds down, 1 - s up).
        layer.alpha.assign(-1.3)
        bound = model_lipschitz_bound(model)
        kernel = 3.0 * np.eye(input_shape[0])
        share = keras.ops.cast(keras.ops.sigmoid(layer.alpha), policy.compute_dtype)
        rest = float(keras.ops.convert_to_numpy(keras.ops.cast(1.0 - share, "float32")))
        share = float(keras.ops.convert_to_numpy(keras.ops.cast(share, "float32")))
        operator = share * np.eye(kernel.shape[0]) + rest * kernel
        assert np.linalg.norm(operator, 2) <= bound * (1 + 1e-9)
    else:
        # Linear maps of norm 1 (a projection, a shift): pairs of points move apart by at most the bound, up to
        # the rounding of the outputs to the compute dtype.
        assert bound == 1.0
        a, b = x[:8], x[8:]
        fa, fb = (model.predict(v, verbose=0).astype(np.float64) for v in (a, b))
        axes = tuple(range(1, len(input_shape) + 1))
        distance = np.sqrt(np.sum((_rounded(a, policy.compute_dtype) - _rounded(b, policy.compute_dtype)) ** 2, axes))
        moved = np.sqrt(np.sum((fa - fb) ** 2, axes))
        rounding = 2 * eps * (np.sqrt(np.sum(fa**2, axes)) + np.sqrt(np.sum(fb**2, axes)))
        assert (moved <= bound * distance + rounding).all()
