"""GroupSort / GroupSort2 / FullSort / MaxMinHalves / MaxMin / CReLU / Householder against numpy references.

Checks: exact values, exact permutations of each group, norm and gradient-norm
preservation, k-Lipschitz on random pairs, serialization, argument errors.
"""

import math

import keras
import numpy as np
import pytest
from _backend import float_eps, gradient_of_weighted_gradient, input_gradient, variable_gradients

import deel_lip_ext.activations as activations_alias
from deel_lip_ext.layers import activations as activation_module
from deel_lip_ext.layers import CReLU, FullSort, GroupSort, GroupSort2, Householder, MaxMin, MaxMinHalves


def _numpy(tensor):
    return keras.ops.convert_to_numpy(tensor)


def _random(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _groupsort_reference(x, n):
    n = x.shape[-1] if n is None else n
    return np.sort(x.reshape(*x.shape[:-1], x.shape[-1] // n, n), axis=-1).reshape(x.shape)


def _maxmin_reference(x):
    a, b = np.split(x, 2, axis=-1)
    return np.concatenate([np.maximum(a, b), np.minimum(a, b)], axis=-1)


def _householder_reference(x, theta):
    z1, z2 = (z.astype("float64") for z in np.split(x, 2, axis=-1))
    theta = theta.astype("float64")
    keep = z1 * np.sin(theta / 2) - z2 * np.cos(theta / 2) <= 0  # deel-lip's half-plane
    out1 = np.where(keep, z1, z1 * np.cos(theta) + z2 * np.sin(theta))
    out2 = np.where(keep, z2, z1 * np.sin(theta) - z2 * np.cos(theta))
    return np.concatenate([out1, out2], axis=-1)


def _householder_with_theta(theta, **kwargs):
    return Householder(theta_initializer=keras.initializers.Constant(theta), **kwargs)


def _groups(x, layer_name, channels):
    """The channel groups each layer permutes, as an array (..., groups, size) of the values."""
    if layer_name == "maxmin":
        return np.stack(np.split(x, 2, axis=-1), axis=-1)
    size = {"groupsort2": 2, "groupsort4": 4, "fullsort": channels}[layer_name]
    return x.reshape(-1, channels // size, size)


PERMUTATION_LAYERS = {
    "groupsort2": GroupSort2,
    "groupsort4": lambda **kw: GroupSort(n=4, **kw),
    "fullsort": FullSort,
    "maxmin": MaxMinHalves,
}

# Every GNP activation, Householder with random angles so that both of its branches occur.
GNP_LAYERS = {**PERMUTATION_LAYERS, "householder": lambda **kw: _householder_with_theta(1.3, **kw)}


@pytest.mark.parametrize("n", [1, 2, 4, None])
@pytest.mark.parametrize("shape", [(3, 4, 4, 8), (5, 8)])
def test_groupsort_matches_numpy(n, shape):
    x = _random(shape)
    np.testing.assert_array_equal(_numpy(GroupSort(n=n)(x)), _groupsort_reference(x, n))


@pytest.mark.parametrize("channels", [6, 34, 64, 96])
def test_groupsort2_matches_numpy_for_every_swap_block(channels):
    # 6: one block; 34: blocks of 2; 64: blocks of 32; 96: blocks of 32 with 3 per row.
    x = _random((4, 3, channels))
    np.testing.assert_array_equal(_numpy(GroupSort2()(x)), _groupsort_reference(x, 2))


def test_fullsort_and_groupsort2_are_groupsort():
    x = _random((2, 3, 3, 8))
    np.testing.assert_array_equal(_numpy(FullSort()(x)), _numpy(GroupSort(n=None)(x)))
    np.testing.assert_array_equal(_numpy(GroupSort2()(x)), _numpy(GroupSort(n=2)(x)))
    assert GroupSort2().n == 2 and FullSort().n is None


def test_maxmin_halves_matches_numpy():
    x = _random((3, 4, 4, 10))
    np.testing.assert_array_equal(_numpy(MaxMinHalves()(x)), _maxmin_reference(x))


@pytest.mark.parametrize("name", sorted(PERMUTATION_LAYERS))
def test_output_is_an_exact_permutation_of_each_group(name):
    x = _random((4, 3, 3, 8))
    # Ties and signed zeros must survive too.
    x[0, 0, 0, :4] = [1.5, 1.5, -0.0, 0.0]
    y = _numpy(PERMUTATION_LAYERS[name]()(x))
    np.testing.assert_array_equal(np.sort(_groups(y, name, 8), axis=-1), np.sort(_groups(x, name, 8), axis=-1))


@pytest.mark.parametrize("name", sorted(GNP_LAYERS))
def test_norm_is_preserved(name):
    x = _random((6, 2, 2, 8))
    y = _numpy(GNP_LAYERS[name]()(x)).astype("float64")
    norms_in = np.linalg.norm(x.astype("float64").reshape(6, -1), axis=1)
    norms_out = np.linalg.norm(y.reshape(6, -1), axis=1)
    # Permutations are exact (float64 sums of the same squares); Householder rotates in float32.
    rtol = 1e-6 if name == "householder" else 1e-13
    np.testing.assert_allclose(norms_out, norms_in, rtol=rtol)


def _k_lipschitz_ratios(layer, shape, k):
    """||f(x) - f(y)|| / ||x - y|| on random and on nearby pairs, checked <= k; float64 so rounding is negligible."""
    x = _random(shape, seed=1).astype("float64")
    # Small moves mostly stay within one linear piece, where the ratio is exactly k.
    others = (_random(shape, seed=2).astype("float64"), x + 1e-3 * _random(shape, seed=3))
    ratios, slacks = [], []
    for other in others:
        out_x, out_other = _numpy(layer(x)), _numpy(layer(other))
        out_dist = np.linalg.norm((out_x - out_other).reshape(shape[0], -1), axis=1)
        in_dist = np.linalg.norm((x - other).reshape(shape[0], -1), axis=1)
        ratios.append(out_dist / in_dist)
        # Below float64, rounding x, y, f(x), f(y) moves the ratio by up to 4 eps (|x| + |y|) / |x - y|.
        sizes = np.linalg.norm(x.reshape(shape[0], -1), axis=1) + np.linalg.norm(other.reshape(shape[0], -1), axis=1)
        slacks.append(4 * float_eps(out_x) * sizes / in_dist)
        assert np.all(ratios[-1] <= k * (1 + 1e-6 + slacks[-1])), ratios[-1].max()
    return ratios, slacks


@pytest.mark.parametrize("name", sorted(GNP_LAYERS) + ["crelu"])
@pytest.mark.parametrize("k", [1.0, 2.0])
def test_k_lipschitz_on_random_pairs(name, k):
    make = CReLU if name == "crelu" else GNP_LAYERS[name]
    (_, near_ratios), (_, near_slacks) = _k_lipschitz_ratios(make(k_coef_lip=k, dtype="float64"), (8, 2, 2, 8), k)
    if name != "crelu":
        # The bound is attained: k is the layer's Lipschitz constant, not just an upper bound.
        assert np.median(near_ratios) == pytest.approx(k, rel=1e-9 + np.max(near_slacks))


@pytest.mark.parametrize("name", sorted(GNP_LAYERS))
@pytest.mark.parametrize("k", [1.0, 0.5])
def test_vjp_preserves_gradient_norm(name, k):
    layer = GNP_LAYERS[name](k_coef_lip=k)
    x = _random((5, 3, 3, 8))
    # Ties too: the Jacobian must stay a permutation there, not send both gradients to one entry.
    x[0, 0, 0, :] = x[0, 0, 0, ::-1]
    x[1, 0, 0, :] = 0.25
    upstream = _random((5, 3, 3, 8), seed=7)
    vjp = input_gradient(layer, x, upstream)
    np.testing.assert_allclose(
        np.linalg.norm(vjp.reshape(5, -1), axis=1),
        k * np.linalg.norm(upstream.reshape(5, -1), axis=1),
        rtol=1e-6,
    )


@pytest.mark.parametrize("name", ["groupsort2", "maxmin"])
def test_pairwise_sorts_pass_each_tied_entry_its_own_gradient(name):
    # TensorFlow's rule, on every backend: at an exact tie the Jacobian is the identity (a
    # permutation), where min/max on JAX and torch would give each entry half of both gradients.
    layer = PERMUTATION_LAYERS[name](k_coef_lip=0.5)
    x = np.full((2, 3, 3, 8), 0.25, dtype="float32")
    x[1] = _random((3, 3, 8))
    x[1, 0, 0, :] = 1.0  # ties only in this pixel of the second sample
    upstream = _random((2, 3, 3, 8), seed=7)
    vjp = input_gradient(layer, x, upstream)
    np.testing.assert_array_equal(vjp[0], 0.5 * upstream[0])
    np.testing.assert_array_equal(vjp[1, 0, 0], 0.5 * upstream[1, 0, 0])


@pytest.mark.parametrize(
    "fused, math, shape",
    [
        (activation_module._sorted_pairs, activation_module._sorted_pairs_math, (40, 2)),
        (activation_module._max_min_halves, activation_module._max_min_halves_math, (10, 2, 4)),
    ],
    ids=["groupsort2", "maxmin_halves"],
)
def test_pairwise_sorts_differentiate_twice_like_their_math(fused, math, shape):
    # The fused pairwise sorts (XLA with a hand-written gradient on TensorFlow) differentiated twice,
    # as tulip's gradient penalty does, against autodiff of the same math written as plain ops; ties too.
    x = _random(shape)
    x.reshape(-1)[:6] = 0.5
    upstream = _random(shape, seed=3)
    np.testing.assert_allclose(
        input_gradient(lambda z: fused(z, 1.5), x, upstream),
        input_gradient(lambda z: math(z, 1.5), x, upstream),
        rtol=1e-6,
    )
    second = gradient_of_weighted_gradient(lambda z: fused(z, 1.5), x, upstream)
    assert np.abs(second).max() > 0.1
    np.testing.assert_allclose(second, gradient_of_weighted_gradient(lambda z: math(z, 1.5), x, upstream), rtol=1e-6)


@pytest.mark.parametrize("name", ["groupsort2", "maxmin"])
def test_float64_sorts_scale_by_k_in_float64(name, float64):
    # k = 1.7 rounded to float32 first would be 1.70000005: a constant above the certified one.
    x = _random((3, 8)).astype("float64")
    layer = PERMUTATION_LAYERS[name](k_coef_lip=1.7)
    unit = PERMUTATION_LAYERS[name]()
    np.testing.assert_array_equal(_numpy(layer(x)), 1.7 * _numpy(unit(x)))


def test_householder_at_half_pi_is_min_max_of_the_halves():
    x = _random((4, 3, 3, 8))
    a, b = np.split(x, 2, axis=-1)
    expected = np.concatenate([np.minimum(a, b), np.maximum(a, b)], -1)
    np.testing.assert_allclose(_numpy(Householder()(x)), expected, atol=1e-6)


def test_householder_at_zero_keeps_z1_and_flips_z2_positive():
    x = _random((4, 3, 3, 8))
    z1, z2 = np.split(x, 2, axis=-1)
    expected = np.concatenate([z1, np.abs(z2)], axis=-1)
    np.testing.assert_allclose(_numpy(_householder_with_theta(0.0)(x)), expected, atol=1e-6)


def test_householder_matches_numpy_for_learned_angles():
    x = _random((4, 3, 3, 8))
    layer = Householder()
    layer.build(x.shape)
    theta = np.random.default_rng(5).uniform(-math.pi, math.pi, size=4).astype("float32")
    layer.theta.assign(theta)
    assert layer.theta.trainable and tuple(layer.theta.shape) == (4,)
    np.testing.assert_allclose(_numpy(layer(x)), _householder_reference(x, theta), atol=1e-5)


def test_householder_theta_gradient_matches_finite_differences():
    x = _random((4, 2, 2, 8)).astype("float64")
    upstream = _random((4, 2, 2, 8), seed=9).astype("float64")
    theta = np.random.default_rng(6).uniform(-math.pi, math.pi, size=4)
    layer = Householder(dtype="float64")
    layer.build(x.shape)
    layer.theta.assign(theta)
    (gradient,) = variable_gradients(lambda: keras.ops.sum(keras.ops.multiply(layer(x), upstream)), [layer.theta])
    step = 1e-6
    numeric = [
        (
            np.sum(_householder_reference(x, theta + step * e) * upstream)
            - np.sum(_householder_reference(x, theta - step * e) * upstream)
        )
        / (2 * step)
        for e in np.eye(4)
    ]
    # Below float64, rounding theta, x and each term moves a sum of products by up to ~8 eps sum |x u|.
    atol = 1e-8 + 8 * float_eps(gradient) * np.sum(np.abs(x) * np.abs(upstream))
    np.testing.assert_allclose(gradient, numeric, rtol=1e-6, atol=atol)
    assert np.all(np.abs(gradient) > 0)


@pytest.mark.parametrize("name", sorted(GNP_LAYERS) + ["crelu"])
def test_k_coef_lip_scales_the_output(name):
    make = CReLU if name == "crelu" else GNP_LAYERS[name]
    x = _random((3, 2, 2, 8))
    np.testing.assert_allclose(_numpy(make(k_coef_lip=2.0)(x)), 2.0 * _numpy(make()(x)), rtol=1e-6, atol=1e-7)


def test_crelu_matches_numpy_and_preserves_the_norm():
    x = _random((5, 3, 3, 4))
    layer = CReLU()
    y = _numpy(layer(x))
    np.testing.assert_array_equal(y, np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], axis=-1))
    assert layer.compute_output_shape((None, 3, 3, 4)) == (None, 3, 3, 8)
    np.testing.assert_allclose(
        np.linalg.norm(y.reshape(5, -1).astype("float64"), axis=1),
        np.linalg.norm(x.reshape(5, -1).astype("float64"), axis=1),
        rtol=1e-13,
    )


ALL_LAYERS = {
    "groupsort2": lambda: GroupSort2(k_coef_lip=0.5),
    "groupsort4": lambda: GroupSort(n=4, k_coef_lip=2.0),
    "fullsort": FullSort,
    "maxmin": lambda: MaxMin(k_coef_lip=3.0),
    "maxmin_halves": lambda: MaxMinHalves(k_coef_lip=3.0),
    "crelu": CReLU,
    "householder": lambda: _householder_with_theta(0.7, k_coef_lip=1.5),
}


@pytest.mark.parametrize("name", sorted(ALL_LAYERS))
def test_config_round_trip(name):
    layer = ALL_LAYERS[name]()
    x = _random((2, 3, 3, 8))
    clone = layer.__class__.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    np.testing.assert_array_equal(_numpy(clone(x)), _numpy(layer(x)))
    assert layer.compute_output_shape(x.shape) == tuple(_numpy(layer(x)).shape)


def test_keras_file_round_trip(tmp_path):
    inputs = keras.Input((3, 3, 8))
    hidden = GroupSort(n=4, k_coef_lip=2.0)(GroupSort2(k_coef_lip=0.5)(inputs))
    hidden = MaxMinHalves()(FullSort()(hidden))
    householder = Householder()
    hidden = CReLU()(householder(hidden))
    model = keras.Model(inputs, hidden)
    householder.theta.assign(np.linspace(-1.0, 2.0, 4).astype("float32"))
    path = tmp_path / "activations.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = _random((4, 3, 3, 8))
    np.testing.assert_array_equal(_numpy(loaded(x)), _numpy(model(x)))
    assert [type(layer).__name__ for layer in loaded.layers[1:]] == [
        "GroupSort2",
        "GroupSort",
        "FullSort",
        "MaxMinHalves",
        "Householder",
        "CReLU",
    ]


def test_layers_train_inside_fit():
    # fit runs the layers in graph mode (tf.function), where variables and tensors behave unlike eager.
    householder = Householder(theta_initializer=keras.initializers.Constant(1.0))
    model = keras.Sequential(
        [
            keras.Input((3, 3, 4)),
            keras.layers.Dense(8),
            GroupSort2(),
            householder,
            MaxMinHalves(k_coef_lip=0.5),
            CReLU(),
            MaxMin(),
            GroupSort(n=4),
            FullSort(),
            keras.layers.Flatten(),
            keras.layers.Dense(1),
        ]
    )
    model.compile(keras.optimizers.SGD(0.1), "mse")
    theta_before = _numpy(householder.theta).copy()
    history = model.fit(_random((16, 3, 3, 4)), _random((16, 1), seed=1), epochs=2, batch_size=8, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert np.all(_numpy(householder.theta) != theta_before)


def test_deel_lip_import_path_reexports_the_layers():
    for name in ("GroupSort", "GroupSort2", "FullSort", "MaxMin", "MaxMinHalves", "CReLU", "Householder"):
        assert getattr(activations_alias, name) is globals()[name]


@pytest.mark.parametrize("n", [0, -2, 1.5, True, "2"])
def test_bad_group_size_is_rejected(n):
    with pytest.raises(ValueError, match="n must be"):
        GroupSort(n=n)


def test_group_size_must_divide_channels():
    with pytest.raises(ValueError, match="n=3 must divide"):
        GroupSort(n=3)(np.zeros((1, 8), "float32"))
    with pytest.raises(ValueError, match="n=2 must divide"):
        GroupSort2()(np.zeros((1, 5), "float32"))


def test_group_size_larger_than_channels_is_a_full_sort_like_deel_lip():
    x = np.array([[3.0, 1.0, -1.0, 2.0, 0.5]], "float32")
    layer = GroupSort(n=7)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x)), np.sort(x, axis=-1))
    assert GroupSort.from_config(layer.get_config()).n == 7


@pytest.mark.parametrize("make", [MaxMinHalves, Householder])
def test_odd_channels_are_rejected(make):
    with pytest.raises(ValueError, match="number of channels .* must be even"):
        make()(np.zeros((1, 2, 2, 5), "float32"))


@pytest.mark.parametrize(
    "make", [GroupSort2, FullSort, MaxMin, MaxMinHalves, CReLU, Householder, lambda **kw: GroupSort(4, **kw)]
)
@pytest.mark.parametrize("k", [0.0, -1.0, float("inf")])
def test_non_positive_k_coef_lip_is_rejected(make, k):
    with pytest.raises(ValueError, match="k_coef_lip"):
        make(k_coef_lip=k)


@pytest.mark.parametrize("make", [GroupSort2, FullSort, MaxMin, MaxMinHalves, CReLU, Householder])
def test_channels_first_is_rejected(make):
    with pytest.raises(ValueError, match="data_format"):
        make(data_format="channels_first")
