"""InvertibleDownSampling / InvertibleUpSampling: PixelUnshuffle channel order, exact inverses, errors."""

import keras
import numpy as np
import pytest

from deel_lip_ext.layers import InvertibleDownSampling, InvertibleUpSampling


def _numpy(tensor):
    return keras.ops.convert_to_numpy(tensor)


def _pixel_unshuffle_reference(x, sh, sw):
    """PyTorch PixelUnshuffle in NHWC, element by element: out[..., c*sh*sw + i*sw + j] = x[h*sh+i, w*sw+j, c]."""
    n, h, w, c = x.shape
    out = np.empty((n, h // sh, w // sw, c * sh * sw), x.dtype)
    for channel in range(c):
        for i in range(sh):
            for j in range(sw):
                out[..., channel * sh * sw + i * sw + j] = x[:, i::sh, j::sw, channel]
    return out


POOL_SIZES = [2, 3, (2, 3), (1, 2)]


def _pair(pool_size):
    return (pool_size, pool_size) if isinstance(pool_size, int) else pool_size


@pytest.mark.parametrize("pool_size", POOL_SIZES)
def test_down_sampling_uses_pixel_unshuffle_channel_order(pool_size):
    sh, sw = _pair(pool_size)
    x = np.arange(2 * 6 * 6 * 3, dtype="float32").reshape(2, 6, 6, 3)
    np.testing.assert_array_equal(_numpy(InvertibleDownSampling(pool_size)(x)), _pixel_unshuffle_reference(x, sh, sw))


def test_channel_order_differs_from_space_to_depth():
    # tf.nn.space_to_depth puts the block offset first: (i*s + j)*C + c. Ours is channel-major.
    x = np.arange(1 * 2 * 2 * 3, dtype="float32").reshape(1, 2, 2, 3)
    out = _numpy(InvertibleDownSampling(2)(x))[0, 0, 0]
    np.testing.assert_array_equal(out, [0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11])


@pytest.mark.parametrize("pool_size", POOL_SIZES)
def test_up_and_down_are_exact_inverses(pool_size):
    sh, sw = _pair(pool_size)
    x = np.random.default_rng(0).normal(size=(3, 6, 6, 2)).astype("float32")
    down, up = InvertibleDownSampling(pool_size), InvertibleUpSampling(pool_size)
    np.testing.assert_array_equal(_numpy(up(down(x))), x)
    y = np.random.default_rng(1).normal(size=(3, 2, 3, 2 * sh * sw)).astype("float32")
    np.testing.assert_array_equal(_numpy(down(up(y))), y)


@pytest.mark.parametrize("make", [InvertibleDownSampling, InvertibleUpSampling])
def test_permutation_preserves_values_and_norm(make):
    x = np.random.default_rng(2).normal(size=(4, 4, 4, 8)).astype("float32")
    y = _numpy(make(2)(x))
    np.testing.assert_array_equal(np.sort(y.reshape(4, -1), axis=1), np.sort(x.reshape(4, -1), axis=1))
    np.testing.assert_allclose(
        np.linalg.norm(y.reshape(4, -1).astype("float64"), axis=1),
        np.linalg.norm(x.reshape(4, -1).astype("float64"), axis=1),
        rtol=1e-13,
    )


@pytest.mark.parametrize("make, in_shape", [(InvertibleDownSampling, (4, 2, 2)), (InvertibleUpSampling, (2, 1, 8))])
def test_operator_is_orthogonal_as_declared(make, in_shape):
    layer = make(2)
    size = int(np.prod(in_shape))
    impulses = np.eye(size, dtype="float32").reshape((size,) + in_shape)
    operator = _numpy(layer(impulses)).reshape(size, -1)
    singular_values = np.linalg.svd(operator, compute_uv=False)
    np.testing.assert_allclose(singular_values, 1.0)
    assert layer.lipschitz_sv() == (singular_values.min(), singular_values.max())


def test_unknown_spatial_size_and_shapes():
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, InvertibleUpSampling(2)(InvertibleDownSampling(2)(inputs)))
    x = np.random.default_rng(3).normal(size=(2, 4, 6, 3)).astype("float32")
    np.testing.assert_array_equal(_numpy(model(x)), x)
    assert InvertibleDownSampling((2, 3)).compute_output_shape((None, 4, 6, 3)) == (None, 2, 2, 18)
    assert InvertibleUpSampling((2, 3)).compute_output_shape((None, 2, 2, 18)) == (None, 4, 6, 3)
    assert InvertibleDownSampling(2).compute_output_shape((None, None, None, 3)) == (None, None, None, 12)


def test_keras_file_round_trip(tmp_path):
    inputs = keras.Input((4, 6, 2))
    model = keras.Model(inputs, InvertibleUpSampling(2)(InvertibleDownSampling((2, 3))(inputs)))
    path = tmp_path / "resampling.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.layers[1].pool_size == (2, 3) and loaded.layers[2].pool_size == (2, 2)
    x = np.random.default_rng(4).normal(size=(2, 4, 6, 2)).astype("float32")
    np.testing.assert_array_equal(_numpy(loaded(x)), _numpy(model(x)))


@pytest.mark.parametrize("make", [InvertibleDownSampling, InvertibleUpSampling])
@pytest.mark.parametrize("bad", [0, (2, 0), (2, 2, 2), 1.5, "2", None])
def test_bad_pool_size_is_rejected(make, bad):
    with pytest.raises(ValueError, match="pool_size"):
        make(bad)


def test_spatial_size_must_be_divisible():
    with pytest.raises(ValueError, match=r"pool_size \(2, 2\).*\(1, 5, 4, 3\)"):
        InvertibleDownSampling(2)(np.zeros((1, 5, 4, 3), "float32"))
    with pytest.raises(ValueError, match="pool_size"):
        InvertibleDownSampling((1, 3))(keras.Input((4, 4, 3)))


def test_up_sampling_channels_must_be_divisible():
    with pytest.raises(ValueError, match=r"pool_size \(2, 2\).*multiple of 4"):
        InvertibleUpSampling(2)(np.zeros((1, 2, 2, 6), "float32"))


@pytest.mark.parametrize("make", [InvertibleDownSampling, InvertibleUpSampling])
def test_channels_first_is_rejected(make):
    with pytest.raises(ValueError, match="data_format"):
        make(2, data_format="channels_first")
