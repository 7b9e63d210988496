"""The Lipschitz protocol, the table of stock constants and the graph walk (issue 11, bound half).

Each "Why" bullet of the issue that concerns bounds has a test here that fails on the release code:
an ignored `activation=`, activations trusted by name, broadcasting merges, ops between layers and
shared layers, convolutions called at another size, and the unclear errors.
"""

import math

import keras
import numpy as np
import pytest
from _backend import float_eps
from keras import ops

from deel_lip_ext import layers as lip
from deel_lip_ext import spectrum
from deel_lip_ext.certification import certified_radius, certify
from deel_lip_ext.linf import certify_lipschitz, linf_lipschitz_bound
from deel_lip_ext.lipschitz import ACTIVATIONS, STOCK_LAYERS, activation_lipschitz
from deel_lip_ext.model import Sequential, is_known_lipschitz
from deel_lip_ext.utils import evaluate_lip_const, layer_lipschitz_constant, model_lipschitz_bound


def _linear_map(model, input_dim):
    """Dense matrix (input_dim, output_dim) of a bias-free linear model, from unit impulses."""
    out = model.predict(np.eye(input_dim, dtype="float32"), verbose=0)
    return out.reshape(input_dim, -1).astype("float64")


def _max_slope(function, low=-12.0, high=12.0):
    """(largest secant slope |f(b) - f(a)| / (b - a) of a scalar activation on a fine grid, its rounding slack).

    Secant slopes never exceed the largest |f'| (mean value theorem); what they can add is the
    rounding of the values: a few ulps of max |f| over the step, 0 in float64. The grid is finer
    in float64 (JAX without x64 and torch's float64 paths may compute in float32).
    """
    precise = float_eps(ops.convert_to_numpy(ops.convert_to_tensor(np.zeros(1), "float64"))) == 0.0
    inputs = ops.convert_to_tensor(np.linspace(low, high, 400001 if precise else 2401), "float64")
    x = ops.convert_to_numpy(inputs).astype(np.float64)  # the grid as computed (rounded in float32)
    values = ops.convert_to_numpy(function(inputs))
    y = values.astype(np.float64)
    rounding = 8 * float_eps(values) * float(np.max(np.abs(y))) / float(np.min(np.diff(x)))
    return float(np.max(np.abs(np.diff(y) / np.diff(x)))), rounding


# ---------------------------------------------------------------- the activation table


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS, key=lambda f: f.__name__), ids=lambda f: f.__name__)
def test_table_constant_bounds_the_measured_slope(activation):
    if activation is keras.activations.softmax:
        pytest.skip("softmax is not elementwise (see test_softmax_constant)")
    measured, rounding = _max_slope(activation)
    constant = ACTIVATIONS[activation][0]
    assert measured <= constant * (1 + 1e-9) + rounding
    assert constant <= measured * 1.01 + 1e-9  # exact, or within 1%: no gratuitous slack


def test_softmax_constant():
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(200):
        z = rng.normal(size=5) * rng.uniform(0.1, 4)
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        jacobian = np.diag(p) - np.outer(p, p)
        worst = max(worst, np.linalg.norm(jacobian, 2), np.abs(jacobian).sum(axis=1).max())
    assert worst <= ACTIVATIONS[keras.activations.softmax][0]


def test_monotone_flags_hold():
    x = np.linspace(-10, 10, 20001)
    for activation, (_, non_decreasing) in ACTIVATIONS.items():
        if activation is keras.activations.softmax:
            continue
        y = ops.convert_to_numpy(activation(ops.convert_to_tensor(x, "float64")))
        rounding = 4 * float_eps(y) * float(np.max(np.abs(y)))  # a few ulps where float64 is not computed
        assert bool(np.all(np.diff(y.astype(np.float64)) >= -1e-12 - rounding)) or not non_decreasing, (
            activation.__name__
        )


# ---------------------------------------------------------------- why 1: activation= counts


@pytest.mark.parametrize(
    "activation, pre_activation",
    [("gelu", math.sqrt(2.0)), ("selu", -1e-3), ("swish", 2.4), ("hard_silu", 2.99)],
)
def test_activation_of_a_constrained_layer_counts_in_the_bound(activation, pre_activation):
    layer = lip.SpectralDense(6, activation=activation, kernel_initializer="orthogonal", name="dense")
    model = keras.Sequential([keras.Input((6,)), layer])
    kernel = ops.convert_to_numpy(layer.effective_kernel()).astype("float64")
    # Inputs whose pre-activations all sit where the activation is steepest.
    x = (np.full((1, 6), pre_activation) @ np.linalg.pinv(kernel)).astype("float32")
    measured = evaluate_lip_const(model, x)
    assert measured > 1.05  # the release bounded this layer by 1
    bound = model_lipschitz_bound(model)
    assert bound >= measured * (1 - 1e-5)
    assert bound == pytest.approx(layer.operator_norm() * ACTIVATIONS[layer.activation][0], rel=1e-6)


@pytest.mark.parametrize(
    "layer", [lip.SpectralDense(4, activation="exponential"), lip.FrobeniusConv2D(2, 3, activation="mish")]
)
def test_unbounded_or_unknown_activation_is_refused(layer):
    shape = (None, 4) if isinstance(layer, lip.SpectralDense) else (None, 5, 5, 1)
    model = keras.Sequential([keras.Input(shape[1:]), layer])
    with pytest.raises(ValueError, match=layer.name):
        model_lipschitz_bound(model)
    with pytest.raises(ValueError, match="lip_const"):
        layer.lipschitz_constant()


# ---------------------------------------------------------------- why 2: identity, never the name


def relu(x):  # noqa: D103 - a user function that only borrows the name
    return 10.0 * keras.activations.relu(x)


def test_user_function_named_relu_is_not_trusted():
    assert relu.__name__ == "relu"
    dense = lip.SpectralDense(4, activation=relu)
    model = keras.Sequential([keras.Input((4,)), dense])
    with pytest.raises(ValueError, match="relu"):
        model_lipschitz_bound(model)
    activation_layer = keras.layers.Activation(relu, name="fake_relu")
    plain = keras.Sequential([keras.Input((4,)), activation_layer])
    with pytest.raises(ValueError, match="fake_relu"):
        model_lipschitz_bound(plain)
    with pytest.raises(ValueError):
        linf_lipschitz_bound(plain)
    assert not is_known_lipschitz(activation_layer)
    assert activation_lipschitz(keras.activations.relu) == 1.0


# ---------------------------------------------------------------- why 3: broadcasting merges


@pytest.mark.parametrize("merge, scale", [(keras.layers.Add, 1.0), (keras.layers.Average, 0.5), (ops.add, 1.0)])
def test_broadcasting_merge_counts_the_copies(merge, scale):
    inputs = keras.Input((8,))
    narrow = lip.SpectralDense(1, use_bias=False)(inputs)
    wide = lip.SpectralDense(64, use_bias=False)(keras.layers.Dense(8, use_bias=False)(inputs))
    merged = merge()([narrow, wide]) if isinstance(merge, type) else merge(narrow, wide)
    model = keras.Model(inputs, merged)
    exact = np.linalg.norm(_linear_map(model, 8), 2)
    bound = model_lipschitz_bound(model)
    assert bound >= exact * (1 - 1e-6)
    dense_norm = np.linalg.norm(ops.convert_to_numpy(model.layers[1].kernel), 2)
    assert bound == pytest.approx(scale * (math.sqrt(64) * 1.0 + dense_norm), rel=1e-5)


def test_broadcast_of_one_branch_reaches_sqrt_copies():
    inputs = keras.Input((4,))
    narrow = keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")(inputs)
    wide = keras.layers.Dense(64, use_bias=False, kernel_initializer="zeros")(inputs)
    model = keras.Model(inputs, keras.layers.Add()([narrow, wide]))
    exact = np.linalg.norm(_linear_map(model, 4), 2)
    assert exact == pytest.approx(2.0 * 8.0, rel=1e-6)  # ||ones(4)|| * sqrt(64); the release said 2
    assert model_lipschitz_bound(model) >= exact * (1 - 1e-6)


def test_broadcast_with_unknown_sizes_is_refused():
    inputs = keras.Input((None, 4))
    narrow = keras.layers.Dense(1)(inputs)
    model = keras.Model(inputs, keras.layers.Add()([narrow, keras.layers.Dense(4)(inputs)]))
    with pytest.raises(ValueError, match="broadcast"):
        model_lipschitz_bound(model)


# ---------------------------------------------------------------- why 4: ops and shared layers


def test_op_between_layers_is_bounded_in_l2_and_linf():
    inputs = keras.Input((6,))
    h = lip.SpectralDense(6, name="d")(inputs)
    model = keras.Model(inputs, lip.SpectralDense(3)(h * 5.0))
    assert model_lipschitz_bound(model) == pytest.approx(5.0, rel=1e-4)
    exact = np.linalg.norm(_linear_map(keras.Model(inputs, h * 5.0), 6), 2)
    assert exact == pytest.approx(5.0, rel=1e-4)
    head = keras.Model(inputs, keras.layers.Dense(3)(h * 5.0))
    inner = keras.Model(inputs, h)
    expected = 5.0 * np.abs(ops.convert_to_numpy(head.layers[-1].kernel)).sum(axis=0).max()
    expected *= np.abs(ops.convert_to_numpy(inner.layers[-1].effective_kernel())).sum(axis=0).max()
    assert linf_lipschitz_bound(head) == pytest.approx(expected, rel=1e-5)


def test_shared_layer_counts_every_call():
    inputs = keras.Input((5,))
    shared = lip.SpectralDense(5, k_coef_lip=2.0)
    model = keras.Model(inputs, shared(shared(inputs)))
    assert model_lipschitz_bound(model) == pytest.approx(4.0, rel=1e-4)
    assert model_lipschitz_bound(model) >= np.linalg.norm(_linear_map(model, 5), 2) * (1 - 1e-6)
    plain = keras.layers.Dense(5, use_bias=False)
    doubled = keras.Model(inputs, plain(plain(inputs)))
    linf_one = np.abs(ops.convert_to_numpy(plain.kernel)).sum(axis=0).max()
    assert linf_lipschitz_bound(doubled) == pytest.approx(linf_one**2, rel=1e-6)


def test_linf_certificate_of_a_scaled_model_is_not_false():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, use_bias=False, kernel_initializer="identity")(inputs * 5.0))
    x = np.array([[1.0, 0.0, 0.0, 0.0]], "float32")
    y = np.array([0])
    # Margin 5: with L = 5, radius 5 / (2 * 5) = 0.5; the release said L = 1 and certified eps = 0.6.
    assert not certify_lipschitz(model, x, y, eps=0.6)[0]
    attack = x + np.array([[-0.6, 0.6, 0.0, 0.0]], "float32")
    assert np.argmax(model.predict(attack, verbose=0)) != 0


@pytest.mark.parametrize(
    "op",
    [
        lambda h: ops.reshape(h, (-1, 2, 3)),
        lambda h: ops.transpose(ops.reshape(h, (-1, 2, 3)), (0, 2, 1)),
        lambda h: -h,
        lambda h: h / 4.0,
        lambda h: h - 1.0,
        lambda h: ops.concatenate([h, h], axis=-1),
        lambda h: ops.relu(h),
    ],
    ids=["reshape", "transpose", "negative", "divide", "shift", "concat", "relu"],
)
def test_known_ops_give_a_bound_above_the_jacobian(op):
    inputs = keras.Input((6,))
    h = keras.layers.Dense(6, use_bias=False)(inputs)
    model = keras.Model(inputs, keras.layers.Flatten()(op(h)))
    x = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
    assert model_lipschitz_bound(model) >= evaluate_lip_const(model, x) * (1 - 1e-5)


@pytest.mark.parametrize(
    "op, match",
    [
        (lambda h: h * h, "Multiply"),
        (lambda h: ops.exp(h), "Exp"),
        (lambda h: ops.reshape(h, (-1, 3)), "batch"),
        (lambda h: ops.concatenate([h, h], axis=0), "batch"),
    ],
    ids=["product", "exp", "reshape-batch", "concat-batch"],
)
def test_unknown_ops_are_refused_clearly(op, match):
    inputs = keras.Input((6,))
    model = keras.Model(inputs, op(keras.layers.Dense(6)(inputs)))
    for norm in ("l2", "linf"):
        with pytest.raises(ValueError, match=match):
            model_lipschitz_bound(model, norm)


def test_ops_that_mix_samples_are_refused():
    inputs = keras.Input(batch_shape=(4, 4))
    h = keras.layers.Dense(4)(inputs)
    for mixed in (ops.transpose(h), ops.reshape(h, (2, 8))):
        with pytest.raises(ValueError, match="batch"):
            model_lipschitz_bound(keras.Model(inputs, mixed))


def test_nested_models_multiple_inputs_and_outputs():
    inner_in = keras.Input((4,))
    inner = keras.Model(inner_in, lip.SpectralDense(4, k_coef_lip=3.0)(inner_in), name="inner")
    a, b = keras.Input((4,)), keras.Input((4,))
    merged = keras.layers.Concatenate()([inner(a), lip.SpectralDense(2, k_coef_lip=2.0)(b)])
    model = keras.Model([a, b], [merged, inner(b)])
    # Outputs: concat (constants 3 and 2 w.r.t. the joint input) and 3: sqrt(9 + 4 + 9).
    assert model_lipschitz_bound(model) == pytest.approx(math.sqrt(9 + 4 + 9), rel=1e-4)
    assert model_lipschitz_bound(model, "linf") >= 3.0


# ---------------------------------------------------------------- why 5: the conv's size


def test_conv_built_for_one_size_refuses_another():
    conv = lip.SpectralConv2D(2, 3, padding="same", name="conv3")
    conv(np.zeros((1, 3, 3, 1), "float32"))
    with pytest.raises(ValueError, match="conv3.*3x3"):
        conv(np.zeros((1, 9, 9, 1), "float32"))
    with pytest.raises(ValueError, match="3x3"):
        conv.lipschitz_constant("l2", (None, 9, 9, 1))
    for cls in (lip.BCOPConv2D, lip.RKOConv2D, lip.OSSNConv2D, lip.SVCMConv2D):
        layer = cls(2, 2, padding="same")
        layer(np.zeros((1, 4, 4, 1), "float32"))
        with pytest.raises(ValueError, match="4x4"):
            layer(np.zeros((1, 6, 6, 1), "float32"))


def test_conv_built_for_any_size_is_bounded_at_each_size():
    conv = lip.SpectralConv2D(2, 3, padding="same", use_bias=False)
    model = keras.Sequential([keras.Input((None, None, 1)), conv])
    for size in (3, 5, 9):
        impulses = np.eye(size * size, dtype="float32").reshape(-1, size, size, 1)
        operator = model.predict(impulses, verbose=0).reshape(size * size, -1)
        exact = np.linalg.norm(operator, 2)
        assert exact <= 1 + 1e-5
        assert conv.lipschitz_constant("l2", (None, size, size, 1)) >= exact * (1 - 1e-6)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_stock_strided_conv_on_a_large_input_gets_the_polyphase_bound(padding, monkeypatch):
    # Above the dense-SVD size a strided stock Conv2D is bounded through its polyphase kernel on an
    # enclosing torus: above the exact norm and close to it. The stride-1 circular symbol of the same
    # kernel counts every input pixel in up to ceil(k / s)^2 windows: here up to 2x the exact norm.
    conv = keras.layers.Conv2D(8, 4, strides=2, padding=padding, use_bias=False)
    conv.build((None, 12, 12, 1))
    filters, kernel = np.random.default_rng(3).normal(size=(3, 3, 1, 2)), np.zeros((4, 4, 1, 8), "float32")
    for position, (row, column) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        # each 3 x 3 filter at the four offsets of a 2 x 2 window: what the export writes
        kernel[row : row + 3, column : column + 3, :, 2 * position : 2 * position + 2] = filters
    conv.set_weights([kernel])
    exact = np.linalg.norm(spectrum.conv_operator_matrix(kernel, (12, 12, 1), (2, 2), padding), 2)
    monkeypatch.setattr(spectrum, "MAX_DENSE_OPERATOR_SIZE", 100)
    bound = layer_lipschitz_constant(conv, "l2", (None, 12, 12, 1))
    assert exact * (1 - 1e-9) <= bound <= 1.2 * exact
    stride_one = spectrum.conv_singular_values(kernel, (15, 15) if padding != "circular" else (12, 12)).max()
    assert stride_one > 1.5 * exact


def test_conv_weights_from_another_size_are_bounded_for_the_size_that_runs():
    small = lip.SpectralConv2D(2, 3, padding="same", use_bias=False)
    small(np.zeros((1, 3, 3, 1), "float32"))
    big = lip.SpectralConv2D(2, 3, padding="same", use_bias=False)
    big.build((None, 9, 9, 1))
    raw = {v.path.split("/")[-1]: v for v in big.weights}
    for variable in small.weights:
        name = variable.path.split("/")[-1]
        if not name.startswith(("cached", "snapshot", "cache")):
            raw[name].assign(variable)
    impulses = np.eye(81, dtype="float32").reshape(81, 9, 9, 1)
    exact = np.linalg.norm(ops.convert_to_numpy(big(impulses)).reshape(81, -1), 2)
    assert big.lipschitz_constant() >= exact * (1 - 1e-6)
    assert exact <= 1 + 1e-5


# ---------------------------------------------------------------- clear errors


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        return self.dense(x) * 3.0


def test_subclassed_model_is_refused_clearly():
    model = _Subclassed()
    model(np.zeros((1, 3), "float32"))
    with pytest.raises(ValueError, match="subclassed"):
        model_lipschitz_bound(model)


def test_certified_radius_on_empty_arrays():
    with pytest.raises(ValueError, match="empty"):
        certified_radius(np.zeros((0, 3), "float32"), np.zeros((0,), "int64"))


def test_two_dimensional_epsilons_are_refused():
    model = keras.Sequential([keras.Input((3,)), lip.SpectralDense(2)])
    x, y = np.zeros((4, 3), "float32"), np.zeros((4,), "int64")
    with pytest.raises(ValueError, match="epsilons"):
        certify(model, (x, y), [[0.1, 0.2]])


def test_certify_with_linf_lip_norm_uses_the_linf_bound():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, use_bias=False)(inputs))
    x, y = np.eye(4, dtype="float32"), np.zeros((4,), "int64")
    result = certify(model, (x, y), 0.1, norm="linf", lip_norm="linf", verbose=False)
    assert result.lip_const == pytest.approx(linf_lipschitz_bound(model))


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize(
    "make, nested",
    [
        (lambda: keras.layers.Dense(3), False),
        (lambda: lip.SpectralDense(3), False),
        (lambda: lip.AOLDense(3), True),
        (lambda: lip.SpectralConv2D(2, 3), False),
    ],
)
def test_a_weight_that_is_not_finite_is_refused_by_every_bound(make, nested, value):
    # Before: numpy's "SVD did not converge", or for a stock Dense with an inf entry a bound of NaN,
    # which no margin comparison rejects.
    layer = make()
    shape = (5, 5, 1) if isinstance(layer, lip.SpectralConv2D) else (4,)
    inner = keras.Sequential([keras.Input(shape), layer, keras.layers.Flatten()])
    model = keras.Sequential([keras.Input(shape), inner]) if nested else inner
    weights = [np.array(w) for w in layer.get_weights()]
    weights[0].flat[0] = value
    layer.set_weights(weights)
    x, y = np.zeros((2,) + shape, "float32"), np.zeros((2,), "int64")
    for bound in (
        lambda: model_lipschitz_bound(model),
        lambda: model_lipschitz_bound(model, "linf"),
        lambda: linf_lipschitz_bound(model),
        lambda: certify(model, (x, y), 0.1, verbose=False),
    ):
        with pytest.raises(ValueError, match=f"{layer.name}.*NaN or infinite value in its weight"):
            bound()


def test_an_infinite_weight_a_layer_declares_is_bounded_and_a_nan_one_refused():
    layer = lip.LInfDistDense(4)  # its norm order p = inf is a weight: the l_inf-dist neuron
    model = keras.Sequential([keras.Input((3,)), layer])
    norm_order = next(weight for weight in layer.weights if weight.name == "p")
    assert layer.infinite_weights == ("p",) and math.isinf(float(ops.convert_to_numpy(norm_order)))
    assert linf_lipschitz_bound(model) == pytest.approx(1.0)
    norm_order.assign(np.nan)
    with pytest.raises(ValueError, match="NaN or infinite value in its weight"):
        linf_lipschitz_bound(model)


def test_a_diverged_parametrization_of_finite_weights_is_refused_by_every_bound():
    # Finite weights, NaN kernel: the RKO power-iteration state is orthogonal to the top singular vector
    # of its matrix, so sigma_max is estimated at 1 instead of 10 and Björck diverges. Before: numpy's
    # "SVD did not converge" from the layer's own lipschitz_constant.
    layer = lip.AOCConv2D(8, 1, padding="circular", use_bias=False)
    model = keras.Sequential([keras.Input((4, 4, 8)), layer, keras.layers.Flatten()])
    matrix = np.eye(8, dtype="float32")[None]
    matrix[0, 0, 0] = 10.0
    layer.rko_matrix.assign(matrix)
    layer.rko_vectors.assign(np.eye(8, dtype="float32")[1:2])
    assert not np.all(np.isfinite(ops.convert_to_numpy(model(np.ones((1, 4, 4, 8), "float32")))))
    x, y = np.zeros((2, 4, 4, 8), "float32"), np.zeros((2,), "int64")
    for bound in (
        lambda: layer.lipschitz_constant("l2"),
        lambda: model_lipschitz_bound(model),
        lambda: certify(model, (x, y), 0.1, verbose=False),
    ):
        with pytest.raises(ValueError, match=f"{layer.name}.*kernel its weights give is not finite"):
            bound()


# ---------------------------------------------------------------- the protocol itself


def test_every_library_layer_answers_the_protocol():
    import inspect

    names = [name for name, obj in vars(lip).items() if inspect.isclass(obj) and issubclass(obj, keras.layers.Layer)]
    assert names
    for name in names:
        assert issubclass(getattr(lip, name), lip.base.LipschitzBounded), name


def test_stock_table_is_keyed_by_exact_class():
    class MyDense(keras.layers.Dense):
        def call(self, x):
            return 100.0 * super().call(x)

    layer = MyDense(2)
    layer.build((None, 3))
    assert type(layer) not in STOCK_LAYERS
    with pytest.raises(ValueError, match="lip_const"):
        layer_lipschitz_constant(layer)


def test_sequential_warns_for_an_activation_that_is_not_1_lipschitz():
    with pytest.warns(UserWarning, match="gelu_layer"):
        Sequential([keras.Input((3,)), lip.SpectralDense(3, activation="gelu", name="gelu_layer")])


@pytest.mark.parametrize("padding, small", [("valid", 3), ("same", 2)])
def test_conv_weights_saved_at_one_size_loaded_at_another(tmp_path, padding, small):
    path = str(tmp_path / "small.weights.h5")
    built_small = keras.Sequential(
        [keras.Input((small, small, 1)), lip.SpectralConv2D(2, 3, padding=padding, name="c")]
    )
    built_small.predict(np.zeros((1, small, small, 1), "float32"), verbose=0)
    built_small.save_weights(path)
    big = keras.Sequential([keras.Input((9, 9, 1)), lip.SpectralConv2D(2, 3, padding=padding, use_bias=True, name="c")])
    big.load_weights(path)
    impulses = np.eye(81, dtype="float32").reshape(81, 9, 9, 1)
    zero = big.predict(np.zeros((1, 9, 9, 1), "float32"), verbose=0).reshape(1, -1)
    exact = np.linalg.norm(big.predict(impulses, verbose=0).reshape(81, -1) - zero, 2)
    assert model_lipschitz_bound(big) >= exact * (1 - 1e-5)


def test_spectrum_and_table_import_no_layer():
    import subprocess
    import sys

    # `import deel_lip_ext` imports every submodule (the package's __init__): load the package as a bare
    # namespace so that only what spectrum and lipschitz import themselves is imported.
    code = (
        "import importlib.util, sys, types\n"
        "package = types.ModuleType('deel_lip_ext')\n"
        "package.__path__ = importlib.util.find_spec('deel_lip_ext').submodule_search_locations\n"
        "sys.modules['deel_lip_ext'] = package\n"
        "import deel_lip_ext.spectrum, deel_lip_ext.lipschitz\n"
        "layers = [m for m in sys.modules if m.startswith('deel_lip_ext.layers')]\n"
        "assert not layers, layers\n"
        "from deel_lip_ext.utils import conv_singular_values, conv_operator_matrix, operator_singular_values\n"
        "assert conv_singular_values is deel_lip_ext.spectrum.conv_singular_values\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_exported_model_has_the_same_bound():
    with pytest.warns(UserWarning, match="not known to be 1-Lipschitz"):  # gelu and selu are not 1-Lipschitz
        model = Sequential(
            [
                keras.Input((6, 6, 2)),
                lip.SpectralConv2D(4, 3, padding="circular", activation="gelu"),
                lip.BCOPConv2D(4, 2, strides=2, activation="tanh"),
                keras.layers.Flatten(),
                lip.SpectralDense(3, activation="selu"),
            ]
        )
    exported = model.vanilla_export()
    assert model_lipschitz_bound(exported) == pytest.approx(model_lipschitz_bound(model), rel=1e-5)
    assert model_lipschitz_bound(exported, "linf") == pytest.approx(model_lipschitz_bound(model, "linf"), rel=1e-5)


def test_unbuilt_parametrized_layer_refuses_with_a_value_error():
    with pytest.raises(ValueError, match="built"):
        lip.SpectralDense(3, name="fresh").lipschitz_constant()
    assert lip.GroupSort2(k_coef_lip=2.0).lipschitz_constant("linf") == 2.0
