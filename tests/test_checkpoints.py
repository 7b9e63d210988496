"""Checkpoints hold the raw state only: the inference cache is neither saved nor trusted on load."""

import importlib.util
import pathlib
import zipfile

import h5py
import keras
import numpy as np
import pytest

from deel_lip_ext.layers import BCOPConv2D, FrobeniusDense, SpectralConv2D, SpectralDense
from deel_lip_ext.model import vanilla_model

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
RELEASE_MODEL = FIXTURES / "release_model.keras"
RELEASE_REFERENCE = FIXTURES / "release_model_reference.npz"


def _release_reference():
    reference = np.load(RELEASE_REFERENCE)
    return reference["inputs"], reference["outputs"]


def _h5_variable_counts(path):
    """{layer path in the file: number of variables saved for it} of a .keras or .weights.h5 file."""
    counts = {}

    def visit(name, item):
        if isinstance(item, h5py.Group) and name.startswith("layers/") and name.endswith("/vars"):
            counts[name[len("layers/") : -len("/vars")]] = len(item.keys())

    if str(path).endswith(".keras"):
        with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as raw, h5py.File(raw, "r") as f:
            f.visititems(visit)
    else:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
    return counts


def _trained_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            SpectralConv2D(3, 3, padding="same", kernel_initializer="glorot_uniform"),
            BCOPConv2D(4, 2, padding="circular"),
            keras.layers.Flatten(),
            SpectralDense(5, kernel_initializer="glorot_uniform"),
            FrobeniusDense(2),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    rng = np.random.default_rng(seed)
    model.fit(rng.normal(size=(8, 6, 6, 2)), rng.normal(size=(8, 2)), batch_size=4, epochs=1, verbose=0)
    return model


def test_release_file_loads_and_runs_identically():
    model = keras.models.load_model(RELEASE_MODEL)
    inputs, outputs = _release_reference()
    np.testing.assert_allclose(model.predict(inputs, verbose=0), outputs, rtol=0, atol=1e-6)
    np.testing.assert_allclose(vanilla_model(model).predict(inputs, verbose=0), outputs, rtol=0, atol=1e-5)
    # The release saved 4 cache variables per layer after the raw state; the loaded layers hold none of them.
    saved = _h5_variable_counts(RELEASE_MODEL)
    assert saved["spectral_dense"] == 7 and saved["spectral_conv2d"] == 7
    assert [w.name for w in model.get_layer("spectral_dense").weights] == ["kernel", "bias", "u"]


def test_release_weights_file_loads_into_a_new_model(tmp_path):
    # A .keras archive holds a .weights.h5 file: the release's weights with the cache inside.
    with zipfile.ZipFile(RELEASE_MODEL) as archive:
        archive.extract("model.weights.h5", tmp_path)
    spec = importlib.util.spec_from_file_location("make_release_fixture", FIXTURES / "make_release_fixture.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    model = maker.build_model()
    inputs, outputs = _release_reference()
    model.predict(inputs, verbose=0)  # fills the new model's caches with its own initial kernels
    model.load_weights(tmp_path / "model.weights.h5")
    np.testing.assert_allclose(model.predict(inputs, verbose=0), outputs, rtol=0, atol=1e-6)


def test_edited_cached_kernel_in_a_release_file_is_not_trusted(tmp_path):
    edited = tmp_path / "edited.keras"
    with zipfile.ZipFile(RELEASE_MODEL) as archive:
        archive.extractall(tmp_path / "unzipped")
    with h5py.File(tmp_path / "unzipped" / "model.weights.h5", "r+") as f:
        variables = f["layers/spectral_dense/vars"]
        # Release layout: kernel, bias, u, cached_kernel, snapshot of kernel, snapshot of u, cache_valid = 1.
        assert variables["3"].shape == variables["0"].shape and float(variables["6"][()]) == 1.0
        variables["3"][...] = 10.0 * variables["3"][...]
    with zipfile.ZipFile(edited, "w") as archive:
        for name in ("metadata.json", "config.json", "model.weights.h5"):
            archive.write(tmp_path / "unzipped" / name, name)
    inputs, outputs = _release_reference()
    model = keras.models.load_model(edited)
    np.testing.assert_allclose(model.predict(inputs, verbose=0), outputs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("suffix", [".keras", ".weights.h5"])
def test_new_files_hold_raw_state_only_and_round_trip_exactly(tmp_path, suffix):
    model = _trained_model()
    x = np.random.default_rng(1).normal(size=(4, 6, 6, 2)).astype("float32")
    before = model.predict(x, verbose=0)  # fills the caches
    path = tmp_path / f"model{suffix}"
    if suffix == ".keras":
        model.save(path)
        loaded = keras.models.load_model(path)
    else:
        model.save_weights(path)
        loaded = _trained_model(seed=5)  # other weights, other (filled) caches
        loaded.predict(x, verbose=0)
        loaded.load_weights(path)
    counts = _h5_variable_counts(path)
    assert sorted(counts.values()) == sorted(len(layer.weights) for layer in model.layers)
    for saved, restored in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(saved, restored)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), before)


def test_get_weights_has_deel_lip_layout():
    model = _trained_model()
    dense = model.layers[3]
    kernel, bias, u = dense.get_weights()
    assert kernel.shape == (6 * 6 * 4, 5) and bias.shape == (5,) and u.shape == (1, 5)
    conv = model.layers[0]
    assert [w.shape for w in conv.get_weights()] == [(3, 3, 2, 3), (3,), (1, 3)]
    assert [w.name for w in model.layers[1].weights] == ["raw_matrices", "bias", "power_vectors"]
    assert [w.name for w in model.layers[4].weights] == ["kernel", "bias"]
    assert len(model.get_weights()) == 3 + 3 + 3 + 2
    # set_weights takes the same list back and the layer computes the function of these weights.
    x = np.random.default_rng(2).normal(size=(3, 6, 6, 2)).astype("float32")
    clone = _trained_model(seed=3)
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone.predict(x, verbose=0), model.predict(x, verbose=0), rtol=0, atol=1e-6)


def test_continued_training_is_identical_after_a_round_trip(tmp_path):
    model = _trained_model()
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(8, 6, 6, 2)).astype("float32"), rng.normal(size=(8, 2)).astype("float32")
    for _ in range(2):
        model.train_on_batch(x, y)
        loaded.train_on_batch(x, y)
    for original, restored in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(original, restored)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_weights_saved_at_one_input_size_do_not_carry_a_stale_kernel(tmp_path):
    def conv_model(size):
        layer = SpectralConv2D(3, 3, padding="same", kernel_initializer="glorot_uniform")
        return keras.Sequential([keras.Input((size, size, 2)), layer]), layer

    small, small_layer = conv_model(2)  # overlap coefficient 1/2 at 2 x 2, 1/3 at 8 x 8
    small.predict(np.zeros((1, 2, 2, 2), "float32"), verbose=0)  # fills the cache with the 2 x 2 kernel
    small.save_weights(tmp_path / "small.weights.h5")
    large, large_layer = conv_model(8)
    large.load_weights(tmp_path / "small.weights.h5")
    small_kernel, large_kernel = (keras.ops.convert_to_numpy(k.effective_kernel()) for k in (small_layer, large_layer))
    np.testing.assert_allclose(large_kernel, small_kernel * 2.0 / 3.0, rtol=1e-5)  # the same weights, other sizes
    x = np.random.default_rng(5).normal(size=(2, 8, 8, 2)).astype("float32")
    exported = large_layer.vanilla_export()[0]
    np.testing.assert_allclose(large.predict(x, verbose=0), keras.ops.convert_to_numpy(exported(x)), atol=1e-5)
