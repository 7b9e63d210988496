"""Test-wide settings: quiet TensorFlow, offline data, deterministic seeds."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Tests never download: they read the project's offline copies when present.
_SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
if _SHARED_DATA.is_dir():
    os.environ.setdefault("DEEL_LIP_EXT_DATA", str(_SHARED_DATA))


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow (CI=true does too)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow") or os.environ.get("CI", "").lower() == "true":
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --run-slow or CI=true")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


def data_available(name):
    folder = os.environ.get("DEEL_LIP_EXT_DATA")
    return bool(folder) and (pathlib.Path(folder) / f"{name}.npz").is_file()


@pytest.fixture(autouse=True)
def _seed_everything():
    keras.utils.set_random_seed(0)
    np.random.seed(0)
    yield
    # Not Keras's default free_memory=True: its full gc.collect() after every test walks every object
    # the worker holds (TensorFlow's graphs among them). On test_loss_inputs + test_layer_contract the
    # teardowns took 70 s against 15 s of tests. Python's own collector still runs on its thresholds.
    keras.backend.clear_session(free_memory=False)


@pytest.fixture
def float64():
    """Keras's floatx is float64 for one test.

    Skipped where Keras computes float64 tensors in float32: Keras 3 promotes 64-bit floats to
    32 bits on JAX and torch (`keras.backend.result_type("float64", "float64")`), so a float64
    reference would be as coarse as a float32 one there.
    """
    if keras.backend.result_type("float64", "float64") != "float64":
        pytest.skip(f"Keras computes float64 in float32 on {keras.backend.backend()} (keras.backend.result_type)")
    previous = keras.config.floatx()
    keras.config.set_floatx("float64")
    yield
    keras.config.set_floatx(previous)
