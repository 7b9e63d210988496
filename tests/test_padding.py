"""circular_pad, CircularPadding2D and mode_pad: pixel-exact against np.pad (wrap, reflect, symmetric), errors."""

import keras
import numpy as np
import pytest
from _backend import input_gradient

from deel_lip_ext.layers import CircularPadding2D, Padding2D, circular_pad
from deel_lip_ext.parametrizations import mode_pad


def _numpy(tensor):
    return keras.ops.convert_to_numpy(tensor)


def _image(shape=(2, 4, 5, 3)):
    return np.arange(np.prod(shape), dtype="float32").reshape(shape)


PADS = [((1, 1), (1, 1)), ((0, 2), (3, 0)), ((0, 0), (0, 0)), ((4, 4), (5, 5)), ((2, 1), (0, 1))]


@pytest.mark.parametrize("padding", PADS)
def test_circular_pad_matches_numpy_wrap(padding):
    x = _image()
    expected = np.pad(x, ((0, 0), *padding, (0, 0)), mode="wrap")
    np.testing.assert_array_equal(_numpy(circular_pad(x, padding)), expected)
    np.testing.assert_array_equal(_numpy(CircularPadding2D(padding)(x)), expected)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("mode", ["constant", "reflect", "symmetric"])
def test_mode_pad_matches_numpy_for_every_pad_size(mode, dtype):
    # Every pad from 0 to the largest the mode allows (reflect < size, symmetric <= size), on each
    # backend: Keras's torch `ops.pad` turns "symmetric" into edge replication, which differs from
    # the mirror (and from the function the certificate bounds) for pads >= 2.
    x = _image((1, 4, 5, 2)).astype(dtype)
    for pad in range(5 if mode == "reflect" else 6):
        padding = ((min(pad, 3 if mode == "reflect" else 4), pad % 3), (pad % 2, pad))
        expected = np.pad(x, ((0, 0), *padding, (0, 0)), mode=mode)
        np.testing.assert_array_equal(_numpy(mode_pad(x, padding, mode)), expected)
        np.testing.assert_array_equal(_numpy(Padding2D(padding, mode=mode)(x)), expected)


def test_mode_pad_of_unknown_spatial_size():
    inputs = keras.Input((None, None, 2))
    model = keras.Model(inputs, Padding2D(((2, 1), (0, 3)), mode="symmetric")(inputs))
    x = _image((1, 4, 5, 2))
    expected = np.pad(x, ((0, 0), (2, 1), (0, 3), (0, 0)), mode="symmetric")
    np.testing.assert_array_equal(_numpy(model(x)), expected)


@pytest.mark.parametrize(
    "padding, expected",
    [
        (2, ((2, 2), (2, 2))),
        ((1, 3), ((1, 1), (3, 3))),
        (((0, 1), (2, 3)), ((0, 1), (2, 3))),
        ([[1, 0], [0, 2]], ((1, 0), (0, 2))),
    ],
)
def test_padding_forms(padding, expected):
    layer = CircularPadding2D(padding)
    assert layer.padding == expected
    x = _image()
    np.testing.assert_array_equal(_numpy(layer(x)), np.pad(x, ((0, 0), *expected, (0, 0)), mode="wrap"))
    assert layer.compute_output_shape(x.shape) == tuple(_numpy(layer(x)).shape)


def test_unknown_spatial_size():
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, CircularPadding2D(((1, 2), (0, 1)))(inputs))
    x = _image()
    np.testing.assert_array_equal(_numpy(model(x)), np.pad(x, ((0, 0), (1, 2), (0, 1), (0, 0)), mode="wrap"))
    assert model.output_shape == (None, None, None, 3)


def test_gradient_counts_the_copies_of_each_pixel():
    gradient = input_gradient(lambda x: circular_pad(x, ((1, 1), (1, 1))), _image((1, 3, 3, 1)))
    # d(sum)/d(pixel) = how many times the pixel appears in the padded image.
    padded_sources = np.pad(np.arange(9).reshape(3, 3), 1, mode="wrap")
    expected = np.bincount(padded_sources.ravel(), minlength=9).reshape(1, 3, 3, 1)
    np.testing.assert_array_equal(gradient, expected)


def test_config_and_keras_file_round_trip(tmp_path):
    layer = CircularPadding2D(((0, 1), (2, 3)))
    clone = CircularPadding2D.from_config(layer.get_config())
    assert clone.padding == layer.padding
    inputs = keras.Input((4, 5, 3))
    model = keras.Model(inputs, layer(inputs))
    path = tmp_path / "padding.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.layers[1].padding == ((0, 1), (2, 3))
    x = _image()
    np.testing.assert_array_equal(_numpy(loaded(x)), _numpy(model(x)))


@pytest.mark.parametrize("padding", [((5, 0), (0, 0)), ((0, 0), (0, 6)), 5])
def test_padding_larger_than_the_input_is_rejected(padding):
    with pytest.raises(ValueError, match="padding .* larger than the input"):
        CircularPadding2D(padding)(_image())
    with pytest.raises(ValueError, match="padding .* larger than the input"):
        circular_pad(_image(), CircularPadding2D(padding).padding)


@pytest.mark.parametrize("padding", [-1, (1, -1), ((1, 2, 3), (0, 0)), ((1, 1),), 1.5, "1", None, True])
def test_bad_padding_is_rejected(padding):
    with pytest.raises(ValueError, match="padding must be"):
        CircularPadding2D(padding)


def test_channels_first_is_rejected():
    with pytest.raises(ValueError, match="data_format"):
        CircularPadding2D(1, data_format="channels_first")
