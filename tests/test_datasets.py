"""deel_lip_ext.datasets: offline sources, search order, array facts, pipelines, errors.

Facts about the real files (shapes, first labels, label counts, pixel means) come from
shared/data/README.md; those tests skip when the offline folder is absent.
"""

import numpy as np
import pytest
from conftest import data_available

from deel_lip_ext import datasets


def _needs(name):
    file_name = {"cifar10": "cifar10_jpeg_20k"}.get(name, name)
    return pytest.mark.skipif(not data_available(file_name), reason=f"{file_name}.npz not in $DEEL_LIP_EXT_DATA")


def _write_npz(folder, file_name, n_train=6, n_test=4, shape=(5, 5), fill=0):
    """A tiny dataset whose image pixels all equal `fill` and labels cycle 0..2."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(
        folder / file_name,
        x_train=np.full((n_train,) + shape, fill, np.uint8),
        y_train=(np.arange(n_train) % 3).astype(np.uint8),
        x_test=np.full((n_test,) + shape, fill, np.uint8),
        y_test=(np.arange(n_test) % 3).astype(np.uint8),
    )


@pytest.fixture
def no_default_sources(monkeypatch, tmp_path):
    """No environment folder, no checkout copies, an empty Keras and tensorflow-datasets cache."""
    monkeypatch.delenv(datasets.ENV_VAR, raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "empty_tfds_cache"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty_keras_home"))
    monkeypatch.setattr(datasets, "CHECKOUT_SHARED_DATA", tmp_path / "no_checkout_copies")
    datasets._read_npz.cache_clear()
    yield
    datasets._read_npz.cache_clear()


# ---------------------------------------------------------------- real data facts


@_needs("mnist")
def test_mnist_arrays_match_the_published_facts():
    x_train, y_train, x_test, y_test = datasets.load_numpy("mnist")
    assert x_train.shape == (60000, 28, 28, 1) and x_test.shape == (10000, 28, 28, 1)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    assert y_train[:5].tolist() == [5, 0, 4, 1, 9]
    assert y_test[:5].tolist() == [7, 2, 1, 0, 4]
    assert np.bincount(y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert x_train.mean(dtype=np.float64) * 255 == pytest.approx(33.3184, abs=1e-3)
    assert x_test.mean(dtype=np.float64) * 255 == pytest.approx(33.7912, abs=1e-3)


@_needs("fashion_mnist")
def test_fashion_mnist_arrays_match_the_published_facts():
    x_train, y_train, x_test, y_test = datasets.load_numpy("fashion_mnist")
    assert x_train.shape == (60000, 28, 28, 1) and x_test.shape == (10000, 28, 28, 1)
    assert y_train[:5].tolist() == [9, 0, 0, 3, 0]
    assert np.bincount(y_train).tolist() == [6000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10
    assert x_train.mean(dtype=np.float64) * 255 == pytest.approx(72.940, abs=1e-2)
    assert len(datasets.CLASS_NAMES["fashion_mnist"]) == 10


@_needs("cifar10")
def test_cifar10_is_found_under_its_jpeg_subset_name():
    x_train, y_train, x_test, y_test = datasets.load_numpy("cifar10")
    assert x_train.shape == (20000, 32, 32, 3) and x_test.shape == (10000, 32, 32, 3)
    assert x_train.dtype == np.float32 and y_test.dtype == np.int64
    assert 0.0 <= x_test.min() and x_test.max() <= 1.0
    assert np.bincount(y_train).tolist() == [2000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10
    channel_means = x_test.reshape(-1, 3).mean(axis=0, dtype=np.float64) * 255
    np.testing.assert_allclose(channel_means, [125.99, 123.69, 114.85], atol=0.02)


@_needs("mnist")
def test_limits_take_the_first_examples_in_stored_order():
    x_train, y_train, _, _ = datasets.load_numpy("mnist")
    x_few, y_few, x_test_few, y_test_few = datasets.load_numpy("mnist", num_train=7, num_test=3)
    assert x_few.shape == (7, 28, 28, 1) and x_test_few.shape == (3, 28, 28, 1)
    np.testing.assert_array_equal(x_few, x_train[:7])
    np.testing.assert_array_equal(y_few, y_train[:7])
    assert y_test_few.tolist() == [7, 2, 1]


@_needs("mnist")
def test_returned_arrays_are_private_copies():
    x_train, y_train, _, _ = datasets.load_numpy("mnist", num_train=2)
    x_train += 1.0
    y_train[:] = -1
    x_again, y_again, _, _ = datasets.load_numpy("mnist", num_train=2)
    assert x_again.max() <= 1.0 and y_again.tolist() == [5, 0]


# ---------------------------------------------------------------- tf.data pipelines


@_needs("mnist")
def test_test_pipeline_is_batched_scaled_and_in_order():
    _, _, x_test, y_test = datasets.load_numpy("mnist", num_test=300)
    pipeline = datasets.load("mnist", split="test", batch_size=128, num_examples=300)
    batches = list(pipeline.as_numpy_iterator())
    assert [len(y) for _, y in batches] == [128, 128, 44]
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape == (300, 28, 28, 1)
    np.testing.assert_allclose(x, x_test, atol=1e-7)
    np.testing.assert_array_equal(y, y_test)


@_needs("mnist")
def test_train_pipeline_is_a_reshuffled_permutation():
    _, y_train, _, _ = datasets.load_numpy("mnist", num_train=500)
    pipeline = datasets.load("mnist", batch_size=100, num_examples=500, seed=0)
    epoch_1 = np.concatenate([y for _, y in pipeline.as_numpy_iterator()])
    epoch_2 = np.concatenate([y for _, y in pipeline.as_numpy_iterator()])
    assert np.bincount(epoch_1).tolist() == np.bincount(y_train).tolist()
    assert not np.array_equal(epoch_1, y_train)
    assert not np.array_equal(epoch_1, epoch_2)


@_needs("cifar10")
def test_drop_remainder_keeps_full_batches_only():
    pipeline = datasets.load("cifar10", split="test", batch_size=64, num_examples=200, drop_remainder=True)
    shapes = [tuple(x.shape) for x, _ in pipeline.as_numpy_iterator()]
    assert shapes == [(64, 32, 32, 3)] * 3


# ---------------------------------------------------------------- search order


def test_data_dir_argument_comes_before_the_environment(no_default_sources, monkeypatch, tmp_path):
    _write_npz(tmp_path / "argument", "mnist.npz", fill=255)
    _write_npz(tmp_path / "environment", "mnist.npz", fill=0)
    monkeypatch.setenv(datasets.ENV_VAR, str(tmp_path / "environment"))
    x_train, y_train, x_test, _ = datasets.load_numpy("mnist", data_dir=tmp_path / "argument")
    assert x_train.shape == (6, 5, 5, 1) and np.all(x_train == 1.0)
    assert y_train.tolist() == [0, 1, 2, 0, 1, 2] and x_test.shape == (4, 5, 5, 1)
    x_env, _, _, _ = datasets.load_numpy("mnist", data_dir=tmp_path / "nothing_here")
    assert np.all(x_env == 0.0)


def test_cifar10_accepts_both_file_names_preferring_the_plain_one(no_default_sources, tmp_path):
    _write_npz(tmp_path, "cifar10_jpeg_20k.npz", shape=(4, 4, 3), fill=51)
    x_train, _, _, _ = datasets.load_numpy("cifar10", data_dir=tmp_path)
    np.testing.assert_allclose(x_train, 0.2)
    _write_npz(tmp_path, "cifar10.npz", shape=(4, 4, 3), fill=102)
    x_train, _, _, _ = datasets.load_numpy("cifar10", data_dir=tmp_path)
    np.testing.assert_allclose(x_train, 0.4)


def test_missing_dataset_error_lists_every_place_and_every_remedy(no_default_sources, monkeypatch, tmp_path):
    monkeypatch.setenv(datasets.ENV_VAR, str(tmp_path / "env_folder"))
    with pytest.raises(datasets.DatasetNotFoundError) as caught:
        datasets.load_numpy("cifar10", data_dir=tmp_path / "arg_folder")
    assert isinstance(caught.value, FileNotFoundError)
    message = str(caught.value)
    for path in (
        tmp_path / "arg_folder" / "cifar10.npz",
        tmp_path / "arg_folder" / "cifar10_jpeg_20k.npz",
        tmp_path / "env_folder" / "cifar10.npz",
        tmp_path / "env_folder" / "cifar10_jpeg_20k.npz",
        tmp_path / "empty_tfds_cache" / "cifar10",
    ):
        assert str(path) in message
    assert "data_dir=" in message and datasets.ENV_VAR in message and "download=True" in message


def test_missing_dataset_without_any_folder(no_default_sources):
    with pytest.raises(FileNotFoundError, match=f"{datasets.ENV_VAR}=<folder> \\(currently not set"):
        datasets.load("fashion_mnist", split="test")


def test_file_without_the_expected_keys_is_rejected(no_default_sources, tmp_path):
    np.savez(tmp_path / "mnist.npz", images=np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(ValueError, match="x_train, y_train, x_test, y_test"):
        datasets.load_numpy("mnist", data_dir=tmp_path)


def test_search_order_is_argument_environment_checkout_then_keras_cache(no_default_sources, monkeypatch, tmp_path):
    """Each source is found when the ones before it lack the file, and wins over the ones after."""
    sources = {
        "argument": tmp_path / "argument",
        "environment": tmp_path / "environment",
        "checkout": tmp_path / "checkout",
        "keras": tmp_path / "keras_home" / "datasets",
    }
    monkeypatch.setenv(datasets.ENV_VAR, str(sources["environment"]))
    monkeypatch.setattr(datasets, "CHECKOUT_SHARED_DATA", sources["checkout"])
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    assert datasets.search_folders(sources["argument"]) == list(sources.values())
    fills = {"argument": 255, "environment": 204, "checkout": 153, "keras": 102}
    for source in reversed(list(sources)):  # add the sources from the last to the first
        _write_npz(sources[source], "mnist.npz", fill=fills[source])
        datasets._read_npz.cache_clear()
        x_train, _, _, _ = datasets.load_numpy("mnist", data_dir=sources["argument"])
        np.testing.assert_allclose(x_train, fills[source] / 255.0)


def test_keras_download_cache_is_read_with_its_own_keys(no_default_sources, monkeypatch, tmp_path):
    """`keras.datasets.mnist.load_data()` caches ~/.keras/datasets/mnist.npz with our four keys."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "home" / ".keras"))
    _write_npz(tmp_path / "home" / ".keras" / "datasets", "mnist.npz", fill=51)
    x_train, y_train, _, _ = datasets.load_numpy("mnist")
    np.testing.assert_allclose(x_train, 0.2)
    assert y_train.tolist() == [0, 1, 2, 0, 1, 2]


def test_missing_dataset_names_the_checkout_and_keras_folders(no_default_sources, tmp_path):
    with pytest.raises(datasets.DatasetNotFoundError) as caught:
        datasets.load_numpy("mnist")
    message = str(caught.value)
    assert str(tmp_path / "no_checkout_copies" / "mnist.npz") in message
    assert str(tmp_path / "empty_keras_home" / "datasets" / "mnist.npz") in message
    assert caught.value.searched[-1].startswith(str(tmp_path / "empty_tfds_cache" / "mnist"))


def test_missing_dataset_message_for_a_command_names_its_flags(no_default_sources):
    with pytest.raises(datasets.DatasetNotFoundError) as caught:
        datasets.load_numpy("fashion_mnist")
    message = caught.value.explain("python demos/hkr_binary.py")
    assert "`python demos/hkr_binary.py --data-dir <folder>`" in message
    assert "`python demos/hkr_binary.py --download`" in message
    assert f"`{datasets.ENV_VAR}=<folder> python demos/hkr_binary.py`" in message
    assert "data_dir=" not in message and "download=True" not in message
    assert all(place in message for place in caught.value.searched)


def test_download_falls_back_to_keras_datasets_without_tensorflow_datasets(no_default_sources, monkeypatch):
    import sys

    import keras

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
    tiny = np.full((3, 4, 4), 255, np.uint8), np.array([1, 2, 3], np.uint8)
    calls = []
    monkeypatch.setattr(keras.datasets.mnist, "load_data", lambda: calls.append(1) or (tiny, tiny))
    with pytest.raises(datasets.DatasetNotFoundError):
        datasets.load_numpy("mnist")
    assert calls == []  # nothing is fetched unless asked
    x_train, y_train, _, _ = datasets.load_numpy("mnist", download=True)
    assert calls == [1] and x_train.shape == (3, 4, 4, 1) and y_train.tolist() == [1, 2, 3]


def _broken_tfds_module():
    """A tensorflow-datasets that imports but fails (4.9.10 without importlib_resources does this)."""
    import types

    def fail(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'importlib_resources'")

    return types.SimpleNamespace(builder=fail, load=fail, as_numpy=fail)


def test_broken_tensorflow_datasets_falls_back_to_keras_datasets(no_default_sources, monkeypatch):
    import sys

    import keras

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", _broken_tfds_module())
    tiny = np.full((3, 4, 4), 255, np.uint8), np.array([1, 2, 3], np.uint8)
    monkeypatch.setattr(keras.datasets.mnist, "load_data", lambda: (tiny, tiny))
    x_train, y_train, _, _ = datasets.load_numpy("mnist", download=True)
    assert x_train.shape == (3, 4, 4, 1) and y_train.tolist() == [1, 2, 3]


def test_every_download_failing_is_one_error_saying_why(no_default_sources, monkeypatch):
    import sys

    import keras

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", _broken_tfds_module())

    def offline():
        raise Exception("URL fetch failure on https://storage.googleapis.com/mnist.npz: [Errno -3] no network")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    with pytest.raises(datasets.DatasetDownloadError) as caught:
        datasets.load_numpy("mnist", download=True)
    error = caught.value
    assert isinstance(error, datasets.DatasetNotFoundError) and isinstance(error, datasets.DatasetError)
    assert len(error.failures) == 2
    assert "tensorflow-datasets: ModuleNotFoundError: No module named 'importlib_resources'" in error.failures[0]
    assert "keras.datasets.mnist.load_data(): Exception: URL fetch failure" in error.failures[1]
    message = error.explain("python demos/certified_mnist.py")
    assert message.startswith("Could not download 'mnist':")
    assert "`python demos/certified_mnist.py --data-dir <folder>`" in message
    assert all(place in message for place in error.searched)
    assert "Traceback" not in message


def test_every_loader_error_is_a_dataset_error():
    assert issubclass(datasets.DatasetFileError, datasets.DatasetError)
    assert issubclass(datasets.DatasetFileError, ValueError)  # unchanged for existing callers
    assert issubclass(datasets.DatasetNotFoundError, FileNotFoundError)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a zip archive at all", b"PK\x03\x04truncated"],
    ids=["empty", "garbage", "truncated-zip-header"],
)
def test_unreadable_file_names_the_path_and_the_fix(no_default_sources, tmp_path, content):
    (tmp_path / "mnist.npz").write_bytes(content)
    with pytest.raises(datasets.DatasetFileError) as caught:
        datasets.load_numpy("mnist", data_dir=tmp_path)
    message = str(caught.value)
    assert str(tmp_path / "mnist.npz") in message and "truncated" in message and "download=True" in message


def test_truncated_npz_names_the_path_and_the_fix(no_default_sources, tmp_path):
    _write_npz(tmp_path / "full", "mnist.npz", n_train=200, shape=(28, 28))
    whole = (tmp_path / "full" / "mnist.npz").read_bytes()
    (tmp_path / "mnist.npz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(datasets.DatasetFileError, match="Replace it with a complete copy") as caught:
        datasets.load_numpy("mnist", data_dir=tmp_path)
    assert str(tmp_path / "mnist.npz") in str(caught.value)


# ---------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda: datasets.load_numpy("imagenet"), "name"),
        (lambda: datasets.load("mnist", split="validation"), "split"),
        (lambda: datasets.load("mnist", batch_size=0), "batch_size"),
        (lambda: datasets.load("mnist", batch_size=2.5), "batch_size"),
        (lambda: datasets.load("mnist", num_examples=-3), "num_examples"),
        (lambda: datasets.load_numpy("mnist", num_train=0), "num_train"),
        (lambda: datasets.load_numpy("mnist", num_test=True), "num_test"),
    ],
)
def test_bad_arguments_name_the_argument(call, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        call()


def test_unknown_name_lists_the_allowed_names():
    with pytest.raises(ValueError, match="'mnist', 'fashion_mnist', 'cifar10'"):
        datasets.load("svhn")


# ---------------------------------------------------------------- binary subsets


def test_binary_subset_keeps_two_classes_in_order_with_chosen_labels():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, size=200)
    x = np.arange(200, dtype=np.float32).reshape(200, 1, 1, 1)
    x_sub, y_sub = datasets.binary_subset(x, y, positive=0, negative=8)
    expected_indices = [i for i, label in enumerate(y) if label in (0, 8)]
    assert x_sub.ravel().tolist() == expected_indices
    assert y_sub.shape == (len(expected_indices), 1) and y_sub.dtype == np.float32
    assert y_sub.ravel().tolist() == [1.0 if y[i] == 0 else -1.0 for i in expected_indices]
    _, y_01 = datasets.binary_subset(x, y, positive=0, negative=8, labels=(1, 0))
    assert sorted(set(y_01.ravel().tolist())) == [0.0, 1.0]
    assert int(y_01.sum()) == int(np.sum(y == 0))


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"positive": 3, "negative": 3}, "positive"),
        ({"positive": 3, "negative": 11}, "negative"),
        ({"positive": 3, "negative": 4, "labels": (1, 1)}, "labels"),
    ],
)
def test_binary_subset_rejects_bad_classes(kwargs, argument):
    y = np.arange(10)
    with pytest.raises(ValueError, match=f"`{argument}`"):
        datasets.binary_subset(np.zeros((10, 2)), y, **kwargs)
