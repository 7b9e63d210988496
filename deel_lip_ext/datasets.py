"""Image datasets (MNIST, Fashion-MNIST, CIFAR-10) as numpy arrays or ``tf.data`` pipelines.

Images come back as float32 in [0, 1], channels-last ``(N, H, W, C)``; labels as int64
class indices. The data is looked for, in this order (the same order for the library and
the demos, whose ``--data-dir`` and ``--download`` flags are the arguments below):

1. ``<data_dir>/<file>.npz`` when the ``data_dir`` argument is given;
2. ``$DEEL_LIP_EXT_DATA/<file>.npz`` when the environment variable is set;
3. ``../shared/data/<file>.npz`` beside the repository checkout (the project's offline copies);
4. Keras's own download cache, ``$KERAS_HOME/datasets`` or ``~/.keras/datasets``
   (``keras.datasets.mnist.load_data()`` leaves ``mnist.npz`` there, with the same keys);
5. the tensorflow-datasets cache (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``);
6. only with ``download=True``: a download with tensorflow-datasets when it is installed,
   else with ``keras.datasets``.

An ``.npz`` file holds the keys ``x_train, y_train, x_test, y_test`` (images uint8 in
0..255, labels class indices); ``<file>`` is the dataset name, and CIFAR-10 also accepts
the name ``cifar10_jpeg_20k.npz``. Nothing is downloaded unless asked for, so tests and
CI stay offline.

Examples:
    >>> from deel_lip_ext import datasets
    >>> x_train, y_train, x_test, y_test = datasets.load_numpy("mnist", num_train=1000)
    >>> x_train.shape, x_train.dtype, y_train.dtype
    ((1000, 28, 28, 1), dtype('float32'), dtype('int64'))
    >>> train = datasets.load("mnist", split="train", batch_size=128)
"""

from __future__ import annotations

import functools
import os
import pathlib
import zipfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from deel_lip_ext._optional import optional_import, tensorflow
from deel_lip_ext._validation import check_choice, check_int

if TYPE_CHECKING:  # pragma: no cover - only for the annotations
    import tensorflow as tf

__all__ = [
    "ENV_VAR",
    "DATASETS",
    "SPLITS",
    "NPZ_KEYS",
    "CLASS_NAMES",
    "DatasetError",
    "DatasetNotFoundError",
    "DatasetDownloadError",
    "DatasetFileError",
    "search_folders",
    "load_numpy",
    "load",
    "binary_subset",
]

ENV_VAR = "DEEL_LIP_EXT_DATA"
DATASETS = ("mnist", "fashion_mnist", "cifar10")
SPLITS = ("train", "test")
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")

# The project's offline copies sit in ../shared/data beside the repository checkout.
CHECKOUT_SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"

# Accepted offline file names, first match wins. The project's CIFAR copy is a
# JPEG-decoded 20k-image subset, hence its longer name.
_NPZ_FILE_NAMES = {
    "mnist": ("mnist.npz",),
    "fashion_mnist": ("fashion_mnist.npz",),
    "cifar10": ("cifar10.npz", "cifar10_jpeg_20k.npz"),
}

CLASS_NAMES = {
    "mnist": tuple(str(digit) for digit in range(10)),
    "fashion_mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    "cifar10": (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ),
}


class DatasetError(Exception):
    """Base class of the loader's errors (catch it to report any of them in one message)."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """Raised when a dataset is in none of the places searched; the message lists them.

    Attributes:
        name (str): the dataset asked for.
        searched (list[str]): every place looked in, in search order.
    """

    _download_when = "to fetch it (needs internet)"

    def __init__(self, name: str, searched: Sequence[str]) -> None:
        self.name = name
        self.searched = list(searched)
        super().__init__(self.explain())

    def explain(self, command: str | None = None) -> str:
        """The message: the places searched and the ways to provide the data.

        Args:
            command: the command line the user ran (e.g. ``"python demos/tulip.py"``);
                when given, the remedies are that command's ``--data-dir``/``--download``
                flags instead of the Python arguments ``data_dir=``/``download=True``.

        Returns:
            A multi-line message.
        """
        files = " or ".join(_NPZ_FILE_NAMES[self.name])
        env_state = f"set to {os.environ[ENV_VAR]!r}" if os.environ.get(ENV_VAR) else "not set"
        if command is None:
            folder_remedy = f"pass `data_dir=<folder>` holding {files}"
            env_remedy = f"set the environment variable {ENV_VAR}=<folder> (currently {env_state})"
            download_remedy = f"pass `download=True` {self._download_when}"
        else:
            folder_remedy = f"run `{command} --data-dir <folder>` with a folder holding {files}"
            env_remedy = f"run `{ENV_VAR}=<folder> {command}` ({ENV_VAR} is currently {env_state})"
            download_remedy = f"run `{command} --download` {self._download_when}"
        return (
            f"Dataset {self.name!r} not found. Looked in:\n  " + "\n  ".join(self.searched) + "\n"
            f"Provide it in one of these ways (an .npz file holds the keys {', '.join(NPZ_KEYS)}):\n"
            f"  - {folder_remedy};\n"
            f"  - {env_remedy};\n"
            f"  - {download_remedy}."
        )


class DatasetDownloadError(DatasetNotFoundError):
    """Raised when ``download=True`` was asked for and every download failed (offline, broken package).

    The message says why each download failed, then lists the places searched
    and the ways to provide the files without a download.

    Attributes:
        name (str): the dataset asked for.
        searched (list[str]): every place looked in, in search order.
        failures (list[str]): one line per download tried: the tool and its error.
    """

    _download_when = "again once the cause above is fixed (network access, a working tensorflow-datasets)"

    def __init__(self, name: str, searched: Sequence[str], failures: Sequence[str]) -> None:
        self.failures = list(failures)
        super().__init__(name, searched)

    def explain(self, command: str | None = None) -> str:
        """`DatasetNotFoundError.explain`'s message, after one line per failed download and its cause."""
        reasons = "\n  ".join(self.failures)
        return f"Could not download {self.name!r}:\n  {reasons}\n" + super().explain(command)


class DatasetFileError(DatasetError, ValueError):
    """Raised when a dataset file exists but cannot be read (truncated, not an .npz, wrong keys)."""


def _tfds_cache_dir():
    return pathlib.Path(os.environ.get("TFDS_DATA_DIR", pathlib.Path.home() / "tensorflow_datasets")).expanduser()


def _keras_cache_dir():
    """Where ``keras.utils.get_file`` (hence ``keras.datasets``) caches its downloads."""
    home = os.environ.get("KERAS_HOME") or pathlib.Path.home() / ".keras"
    return pathlib.Path(home).expanduser() / "datasets"


def search_folders(data_dir: str | os.PathLike | None = None) -> list[pathlib.Path]:
    """The folders searched for ``<dataset>.npz``, in search order (duplicates removed).

    Args:
        data_dir: the folder given as argument (or ``--data-dir``), searched first.

    Returns:
        ``data_dir``, ``$DEEL_LIP_EXT_DATA``, ``../shared/data`` beside the checkout and
        Keras's cache folder, those that apply. The tensorflow-datasets cache, searched
        after them, is not a folder of ``.npz`` files and is not in this list.

    Examples:
        >>> [str(folder) for folder in search_folders("my_data")][0]
        'my_data'
    """
    folders = []
    if data_dir is not None:
        folders.append(pathlib.Path(data_dir).expanduser())
    if os.environ.get(ENV_VAR):
        folders.append(pathlib.Path(os.environ[ENV_VAR]).expanduser())
    folders += [CHECKOUT_SHARED_DATA, _keras_cache_dir()]
    unique = []
    for folder in folders:
        if folder not in unique:
            unique.append(folder)
    return unique


def _npz_candidates(name, data_dir):
    """The offline files to try, in search order."""
    return [folder / file_name for folder in search_folders(data_dir) for file_name in _NPZ_FILE_NAMES[name]]


def _unreadable(path, error):
    return DatasetFileError(
        f"{path} exists but is not a readable dataset file ({type(error).__name__}: {error}); it is "
        f"probably truncated or not an .npz archive. Replace it with a complete copy holding the keys "
        f"{', '.join(NPZ_KEYS)}, or delete it and fetch the data again with `download=True` "
        f"(`--download` in the demos)."
    )


@functools.lru_cache(maxsize=2)
def _read_npz(path):
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise _unreadable(path, error) from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DatasetFileError(f"{path} holds a single array, not an .npz archive with the keys {', '.join(NPZ_KEYS)}.")
    with archive:
        missing = [key for key in NPZ_KEYS if key not in archive.files]
        if missing:
            raise DatasetFileError(
                f"{path} lacks the key(s) {missing}; a dataset file must hold {', '.join(NPZ_KEYS)}."
            )
        try:
            arrays = tuple(archive[key] for key in NPZ_KEYS)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise _unreadable(path, error) from error
    for array in arrays:
        # Cached arrays are shared between calls: make accidental in-place edits fail.
        array.setflags(write=False)
    return arrays


def _read_tfds(name, download, failures):
    """uint8 arrays from tensorflow-datasets, or None when not cached, not downloading or failing.

    A failure (tensorflow-datasets broken, offline, ...) is appended to `failures` as one line.
    """
    tfds_name_dir = _tfds_cache_dir() / name
    if not download and not tfds_name_dir.is_dir():
        return None  # skip the slow tfds import when its cache cannot hold the dataset
    try:
        tfds = optional_import("tensorflow_datasets", "loading from the tensorflow-datasets cache")
    except ImportError:
        return None  # not installed: keras.datasets downloads instead
    try:
        builder = tfds.builder(name, data_dir=str(_tfds_cache_dir()))
        if not download and not builder.is_prepared():
            return None
        splits = tfds.as_numpy(
            tfds.load(
                name,
                split=list(SPLITS),
                batch_size=-1,
                as_supervised=True,
                data_dir=str(_tfds_cache_dir()),
                download=download,
            )
        )
    except Exception as error:  # any tfds failure (broken install, offline) ends in the loader's message
        failures.append(f"tensorflow-datasets: {_one_line(error)}")
        return None
    (x_train, y_train), (x_test, y_test) = splits
    return x_train, y_train, x_test, y_test


def _download_with_keras(name, failures):
    """``keras.datasets.<name>.load_data()`` (downloads into Keras's cache folder), or None on failure."""
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, name).load_data()
    except Exception as error:  # offline, proxy, disk full: one message, no traceback
        failures.append(f"keras.datasets.{name}.load_data(): {_one_line(error)}")
        return None
    return x_train, y_train, x_test, y_test


def _one_line(error):
    """`ErrorType: message` on one line, cut to 300 characters."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= 300 else text[:297] + "..."


def _searched_places(name, candidates):
    return [str(path) for path in candidates] + [f"{_tfds_cache_dir() / name} (tensorflow-datasets cache)"]


def _load_raw(name, data_dir, download):
    """(x_train, y_train, x_test, y_test) as stored: uint8 images, integer labels."""
    check_choice(name, "`name`", DATASETS)
    candidates = _npz_candidates(name, data_dir)
    for path in candidates:
        if path.is_file():
            return _read_npz(str(path.resolve()))
    failures = []
    arrays = _read_tfds(name, download, failures)
    if arrays is None and download:
        arrays = _download_with_keras(name, failures)
    if arrays is None and failures:
        raise DatasetDownloadError(name, _searched_places(name, candidates), failures)
    if arrays is None:
        raise DatasetNotFoundError(name, _searched_places(name, candidates))
    return arrays


def _prepare_images(x):
    """uint8 (N, H, W) or (N, H, W, C) -> float32 (N, H, W, C) in [0, 1]."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4:
        raise ValueError(f"images must have shape (N, H, W) or (N, H, W, C); got {x.shape}.")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    return x.astype(np.float32)


def _prepare_labels(y):
    return np.asarray(y).reshape(-1).astype(np.int64)


def load_numpy(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    num_train: int | None = None,
    num_test: int | None = None,
    download: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load a whole dataset as numpy arrays.

    Args:
        name: "mnist", "fashion_mnist" or "cifar10".
        data_dir: folder holding ``<name>.npz``; searched first (see the module's search order).
        num_train: keep only the first ``num_train`` training examples (None: all).
        num_test: keep only the first ``num_test`` test examples (None: all).
        download: download the data (tensorflow-datasets when installed, else
            ``keras.datasets``) when it is found nowhere else (off by default: nothing is
            fetched behind your back).

    Returns:
        ``(x_train, y_train, x_test, y_test)``: images float32 in [0, 1] of shape
        (N, H, W, C), labels int64 of shape (N,).

    Raises:
        ValueError: unknown ``name`` or a bad ``num_train``/``num_test``.
        DatasetNotFoundError: the data is in none of the places searched.
        DatasetFileError: a file was found but is truncated, not an ``.npz`` archive, or
            lacks one of the keys; the message names the file and the fix.

    Examples:
        >>> x_train, y_train, x_test, y_test = load_numpy("mnist", num_test=500)
        >>> x_test.shape
        (500, 28, 28, 1)
    """
    check_int(num_train, "`num_train`", allow_none=True)
    check_int(num_test, "`num_test`", allow_none=True)
    x_train, y_train, x_test, y_test = _load_raw(name, data_dir, download)
    return (
        _prepare_images(x_train[:num_train]),
        _prepare_labels(y_train[:num_train]),
        _prepare_images(x_test[:num_test]),
        _prepare_labels(y_test[:num_test]),
    )


def load(
    name: str,
    split: str = "train",
    batch_size: int = 128,
    shuffle: bool | None = None,
    data_dir: str | os.PathLike | None = None,
    *,
    num_examples: int | None = None,
    download: bool = False,
    seed: int | None = None,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Load one split of a dataset as a batched, prefetched ``tf.data.Dataset``.

    Batches are ``(x, y)`` with x float32 in [0, 1] of shape (batch, H, W, C) and y
    int64 of shape (batch,). Images are kept as uint8 in the pipeline and scaled per
    batch, so a whole split costs a quarter of its float32 size in memory.

    Args:
        name: "mnist", "fashion_mnist" or "cifar10".
        split: "train" or "test".
        batch_size: positive number of examples per batch.
        shuffle: reshuffle the examples every epoch; None means True for "train" and
            False for "test".
        data_dir: folder holding ``<name>.npz``; searched first (see the module's search order).
        num_examples: keep only the first ``num_examples`` examples of the split.
        download: download the data when it is found nowhere else (as in `load_numpy`).
        seed: shuffling seed (None: a different order on every run).
        drop_remainder: drop the last incomplete batch.

    Returns:
        A ``tf.data.Dataset`` of ``(x, y)`` batches.

    Raises:
        ValueError: unknown ``name`` or ``split``, bad ``batch_size``/``num_examples``.
        DatasetNotFoundError: the data is in none of the places searched.

    Examples:
        >>> test = load("mnist", split="test", batch_size=256)
        >>> x, y = next(iter(test))
        >>> x.shape, y.dtype.name
        (TensorShape([256, 28, 28, 1]), 'int64')
    """
    tf = tensorflow("deel_lip_ext.datasets.load (a tf.data pipeline)")
    check_choice(name, "`name`", DATASETS)
    check_choice(split, "`split`", SPLITS)
    check_int(batch_size, "`batch_size`")
    check_int(num_examples, "`num_examples`", allow_none=True)
    if shuffle is None:
        shuffle = split == "train"

    x_train, y_train, x_test, y_test = _load_raw(name, data_dir, download)
    x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
    x = np.asarray(x[:num_examples])
    if x.ndim == 3:
        x = x[..., np.newaxis]
    y = _prepare_labels(y[:num_examples])

    pipeline = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        pipeline = pipeline.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    pipeline = pipeline.batch(batch_size, drop_remainder=drop_remainder)
    scale = 1.0 / 255.0 if x.dtype == np.uint8 else 1.0
    pipeline = pipeline.map(
        lambda images, labels: (tf.cast(images, tf.float32) * scale, labels),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return pipeline.prefetch(tf.data.AUTOTUNE)


def binary_subset(
    x: Any, y: Any, positive: int, negative: int, labels: tuple[float, float] = (1, -1)
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the examples of two classes and relabel them for binary (e.g. HKR) training.

    Args:
        x: images (or any array whose first axis indexes examples).
        y: integer class labels, shape (N,).
        positive: class index mapped to ``labels[0]``.
        negative: class index mapped to ``labels[1]``; must differ from ``positive``.
        labels: the two output label values, e.g. (1, -1) for KR/HKR losses or (1, 0)
            for binary cross-entropy.

    Returns:
        ``(x_subset, y_subset)``: the selected examples in their original order, and
        float32 labels of shape (n, 1) (one output unit, as a binary Keras loss expects).

    Examples:
        >>> x_train, y_train, _, _ = load_numpy("mnist")
        >>> x08, y08 = binary_subset(x_train, y_train, positive=0, negative=8)
        >>> sorted(set(y08.ravel().tolist()))
        [-1.0, 1.0]
    """
    y = np.asarray(y).reshape(-1)
    if positive == negative:
        raise ValueError(f"`positive` and `negative` must be two different classes; both are {positive!r}.")
    if len(labels) != 2 or labels[0] == labels[1]:
        raise ValueError(f"`labels` must be two different values, e.g. (1, -1); got {labels!r}.")
    for argument, value in (("positive", positive), ("negative", negative)):
        if not np.any(y == value):
            present = sorted(np.unique(y).tolist())
            raise ValueError(f"`{argument}`={value!r} is not a class of `y`; present classes: {present}.")
    keep = (y == positive) | (y == negative)
    binary = np.where(y[keep] == positive, labels[0], labels[1]).astype(np.float32)
    return np.asarray(x)[keep], binary[:, np.newaxis]
