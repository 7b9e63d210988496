"""Image datasets (MNIST, Fashion-MNIST, CIFAR-10) as numpy arrays or ``tf.data`` pipelines.

Images come back as float32 in [0, 1], channels-last ``(N, H, W, C)``; labels as int64
class indices. The data is looked for, in this order:

1. ``<data_dir>/<file>.npz`` when the ``data_dir`` argument is given;
2. ``$DEEL_LIP_EXT_DATA/<file>.npz`` when the environment variable is set;
3. the tensorflow-datasets cache (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``), and
   only with ``download=True`` a tensorflow-datasets download.

An ``.npz`` file holds the keys ``x_train, y_train, x_test, y_test`` (images uint8 in
0..255, labels class indices); ``<file>`` is the dataset name, and CIFAR-10 also accepts
the name ``cifar10_jpeg_20k.npz``. Nothing is downloaded unless asked for, so tests and
CI stay offline.

Example:
    >>> from deel_lip_ext import datasets
    >>> x_train, y_train, x_test, y_test = datasets.load_numpy("mnist", num_train=1000)
    >>> x_train.shape, x_train.dtype, y_train.dtype
    ((1000, 28, 28, 1), dtype('float32'), dtype('int64'))
    >>> train = datasets.load("mnist", split="train", batch_size=128)
"""

import functools
import os
import pathlib

import numpy as np

ENV_VAR = "DEEL_LIP_EXT_DATA"
DATASETS = ("mnist", "fashion_mnist", "cifar10")
SPLITS = ("train", "test")
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")

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
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
    "cifar10": (
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    ),
}


class DatasetNotFoundError(FileNotFoundError):
    """Raised when a dataset is in none of the places searched; the message lists them."""


def _check_choice(argument, value, allowed):
    if value not in allowed:
        raise ValueError(
            f"`{argument}` must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}."
        )


def _check_count(argument, value, allow_none=True):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        allowed = "a positive integer" + (" or None" if allow_none else "")
        raise ValueError(f"`{argument}` must be {allowed}; got {value!r}.")


def _tfds_cache_dir():
    return pathlib.Path(
        os.environ.get("TFDS_DATA_DIR", pathlib.Path.home() / "tensorflow_datasets")
    ).expanduser()


def _npz_candidates(name, data_dir):
    """The offline files to try, in search order (duplicates removed)."""
    folders = []
    if data_dir is not None:
        folders.append(pathlib.Path(data_dir).expanduser())
    if os.environ.get(ENV_VAR):
        folders.append(pathlib.Path(os.environ[ENV_VAR]).expanduser())
    candidates = []
    for folder in folders:
        for file_name in _NPZ_FILE_NAMES[name]:
            path = folder / file_name
            if path not in candidates:
                candidates.append(path)
    return candidates


@functools.lru_cache(maxsize=2)
def _read_npz(path):
    with np.load(path) as archive:
        missing = [key for key in NPZ_KEYS if key not in archive.files]
        if missing:
            raise ValueError(
                f"{path} lacks the key(s) {missing}; a dataset file must hold "
                f"{', '.join(NPZ_KEYS)}."
            )
        arrays = tuple(archive[key] for key in NPZ_KEYS)
    for array in arrays:
        # Cached arrays are shared between calls: make accidental in-place edits fail.
        array.setflags(write=False)
    return arrays


def _read_tfds(name, download):
    """uint8 arrays from tensorflow-datasets, or None when not cached and not downloading."""
    tfds_name_dir = _tfds_cache_dir() / name
    if not download and not tfds_name_dir.is_dir():
        return None  # skip the slow tfds import when its cache cannot hold the dataset
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        if download:
            raise ImportError(
                "`download=True` needs tensorflow-datasets: pip install tensorflow-datasets"
            ) from error
        return None
    builder = tfds.builder(name, data_dir=str(_tfds_cache_dir()))
    if not download and not builder.is_prepared():
        return None
    splits = tfds.as_numpy(
        tfds.load(
            name, split=list(SPLITS), batch_size=-1, as_supervised=True,
            data_dir=str(_tfds_cache_dir()), download=download,
        )
    )
    (x_train, y_train), (x_test, y_test) = splits
    return x_train, y_train, x_test, y_test


def _not_found_message(name, candidates):
    looked = [str(path) for path in candidates]
    looked.append(f"{_tfds_cache_dir() / name} (tensorflow-datasets cache)")
    env_state = f"set to {os.environ[ENV_VAR]!r}" if os.environ.get(ENV_VAR) else "not set"
    return (
        f"Dataset {name!r} not found. Looked in:\n  " + "\n  ".join(looked) + "\n"
        f"Provide it in one of these ways:\n"
        f"  - pass `data_dir=<folder>` holding {' or '.join(_NPZ_FILE_NAMES[name])} "
        f"(keys {', '.join(NPZ_KEYS)});\n"
        f"  - set the environment variable {ENV_VAR}=<folder> (currently {env_state});\n"
        f"  - pass `download=True` to fetch it with tensorflow-datasets (needs internet)."
    )


def _load_raw(name, data_dir, download):
    """(x_train, y_train, x_test, y_test) as stored: uint8 images, integer labels."""
    _check_choice("name", name, DATASETS)
    candidates = _npz_candidates(name, data_dir)
    for path in candidates:
        if path.is_file():
            return _read_npz(str(path.resolve()))
    arrays = _read_tfds(name, download)
    if arrays is None:
        raise DatasetNotFoundError(_not_found_message(name, candidates))
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


def load_numpy(name, data_dir=None, *, num_train=None, num_test=None, download=False):
    """Load a whole dataset as numpy arrays.

    Args:
        name: "mnist", "fashion_mnist" or "cifar10".
        data_dir: folder holding ``<name>.npz``; searched before ``$DEEL_LIP_EXT_DATA``.
        num_train: keep only the first ``num_train`` training examples (None: all).
        num_test: keep only the first ``num_test`` test examples (None: all).
        download: allow tensorflow-datasets to download the data when it is found
            nowhere else (off by default: nothing is fetched behind your back).

    Returns:
        ``(x_train, y_train, x_test, y_test)``: images float32 in [0, 1] of shape
        (N, H, W, C), labels int64 of shape (N,).

    Raises:
        ValueError: unknown ``name`` or a bad ``num_train``/``num_test``.
        DatasetNotFoundError: the data is in none of the places searched.

    Example:
        >>> x_train, y_train, x_test, y_test = load_numpy("mnist", num_test=500)
        >>> x_test.shape
        (500, 28, 28, 1)
    """
    _check_count("num_train", num_train)
    _check_count("num_test", num_test)
    x_train, y_train, x_test, y_test = _load_raw(name, data_dir, download)
    return (
        _prepare_images(x_train[:num_train]),
        _prepare_labels(y_train[:num_train]),
        _prepare_images(x_test[:num_test]),
        _prepare_labels(y_test[:num_test]),
    )


def load(
    name,
    split="train",
    batch_size=128,
    shuffle=None,
    data_dir=None,
    *,
    num_examples=None,
    download=False,
    seed=None,
    drop_remainder=False,
):
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
        data_dir: folder holding ``<name>.npz``; searched before ``$DEEL_LIP_EXT_DATA``.
        num_examples: keep only the first ``num_examples`` examples of the split.
        download: allow a tensorflow-datasets download when the data is found nowhere else.
        seed: shuffling seed (None: a different order on every run).
        drop_remainder: drop the last incomplete batch.

    Returns:
        A ``tf.data.Dataset`` of ``(x, y)`` batches.

    Raises:
        ValueError: unknown ``name`` or ``split``, bad ``batch_size``/``num_examples``.
        DatasetNotFoundError: the data is in none of the places searched.

    Example:
        >>> test = load("mnist", split="test", batch_size=256)
        >>> x, y = next(iter(test))
        >>> x.shape, y.dtype.name
        (TensorShape([256, 28, 28, 1]), 'int64')
    """
    import tensorflow as tf

    _check_choice("name", name, DATASETS)
    _check_choice("split", split, SPLITS)
    _check_count("batch_size", batch_size, allow_none=False)
    _check_count("num_examples", num_examples)
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


def binary_subset(x, y, positive, negative, labels=(1, -1)):
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

    Example:
        >>> x_train, y_train, _, _ = load_numpy("mnist")
        >>> x08, y08 = binary_subset(x_train, y_train, positive=0, negative=8)
        >>> sorted(set(y08.ravel().tolist()))
        [-1.0, 1.0]
    """
    y = np.asarray(y).reshape(-1)
    if positive == negative:
        raise ValueError(
            f"`positive` and `negative` must be two different classes; both are {positive!r}."
        )
    if len(labels) != 2 or labels[0] == labels[1]:
        raise ValueError(f"`labels` must be two different values, e.g. (1, -1); got {labels!r}.")
    for argument, value in (("positive", positive), ("negative", negative)):
        if not np.any(y == value):
            present = sorted(np.unique(y).tolist())
            raise ValueError(
                f"`{argument}`={value!r} is not a class of `y`; present classes: {present}."
            )
    keep = (y == positive) | (y == negative)
    binary = np.where(y[keep] == positive, labels[0], labels[1]).astype(np.float32)
    return np.asarray(x)[keep], binary[:, np.newaxis]
