"""Data-parallel training on 2 CPU devices: tf.distribute.MirroredStrategy (TensorFlow), keras.distribution (JAX).

Each run is a subprocess: the 2 devices must be configured before the framework starts
(`tf.config.set_logical_device_configuration`, `XLA_FLAGS=--xla_force_host_platform_device_count=2`).
The subprocess trains one Lipschitz model on 2 devices and the same model on 1 device from the same
weights and batches; it reports every variable's copies on the devices (the parametrization state:
power-iteration vectors and kernel caches must agree across replicas) and the exported model's
logits and `certify`'s radii of both runs.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, os, sys
import numpy as np
backend = os.environ["KERAS_BACKEND"]
if backend == "tensorflow":
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from deel_lip_ext import layers as lip
from deel_lip_ext.certification import certify
from deel_lip_ext.model import Sequential

rng = np.random.default_rng(0)
x = rng.normal(size=(64, 8, 8, 1)).astype("float32")
y = np.eye(4, dtype="float32")[rng.integers(0, 4, size=64)]

def make():
    keras.utils.set_random_seed(0)
    model = Sequential([keras.Input((8, 8, 1)), lip.SpectralConv2D(4, 3, name="conv"), lip.GroupSort2(),
                        keras.layers.Flatten(), lip.SpectralDense(4, name="dense")])
    model.compile(keras.optimizers.SGD(0.05), keras.losses.CategoricalCrossentropy(from_logits=True))
    return model

def copies(variable, strategy):
    value = variable.value
    if backend == "jax":
        return [np.asarray(shard.data) for shard in value.addressable_shards]
    return [np.asarray(local) for local in strategy.experimental_local_results(value)]

def train(distributed):
    if backend == "jax":
        devices = keras.distribution.list_devices("cpu")
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices) if distributed else None)
        model, strategy = make(), None
        n_devices = len(devices) if distributed else 1
    else:
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if distributed else tf.distribute.get_strategy()
        with strategy.scope():
            model = make()
        n_devices = strategy.num_replicas_in_sync
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    spread = 0.0
    for variable in model.variables:
        values = copies(variable, strategy)
        spread = max(spread, max(float(np.max(np.abs(v - values[0]))) if v.size else 0.0 for v in values))
    exported = model.vanilla_export()
    result = certify(model, (x, y), [0.01, 0.05], verbose=False)
    if backend == "jax":
        keras.distribution.set_distribution(None)
    return {"devices": n_devices, "copies": len(copies(model.variables[0], strategy)), "spread": spread,
            "export": np.asarray(exported.predict(x, verbose=0)).tolist(), "radii": np.asarray(result.radii).tolist(),
            "weights": [np.asarray(w).ravel().tolist() for w in model.get_weights()]}

print("RESULT " + json.dumps({"distributed": train(True), "single": train(False)}))
"""


def run_data_parallel(backend):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPOSITORY_ROOT))
    if backend == "jax":
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPOSITORY_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    line = next(line for line in completed.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def _installed(module):
    return importlib.util.find_spec(module) is not None


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("tensorflow", marks=pytest.mark.skipif(not _installed("tensorflow"), reason="needs TensorFlow")),
        pytest.param("jax", marks=pytest.mark.skipif(not _installed("jax"), reason="needs JAX")),
    ],
)
def test_data_parallel_training_matches_one_device(backend):
    results = run_data_parallel(backend)
    distributed, single = results["distributed"], results["single"]
    assert distributed["devices"] == 2 and distributed["copies"] == 2 and single["devices"] == 1
    # Every variable (kernels, power-iteration vectors, caches, optimizer slots) identical on both devices.
    assert distributed["spread"] == 0.0
    # Same weights, exported logits and certificates as one device, up to the order of the gradient sums.
    for a, b in zip(distributed["weights"], single["weights"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(distributed["export"], single["export"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(distributed["radii"], single["radii"], rtol=1e-4, atol=1e-5)
    assert max(distributed["radii"]) > 0.0
