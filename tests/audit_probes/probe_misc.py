"""Miscellaneous adversarial cases: channels_first global average pooling, a Dropout node called with
training=True, LoRA / int8-quantized Dense, large inputs (FFT / overlap bounds vs power iteration from below),
mixed precision (stock layers, constants, LipResidual share rounded to the compute dtype)."""

import sys

import harness  # noqa: F401
import keras
import numpy as np
import tensorflow as tf

from deel_lip_ext import layers as lip
from deel_lip_ext.utils import model_lipschitz_bound
from harness import affine_matrix, jacobian_lower, l2_norm


def show(tag, bound, measured):
    flag = "VIOLATION" if measured > bound * (1 + 1e-6) + 1e-9 else "ok"
    print(f"{flag:9s} {tag}: bound {bound:.7g} measured {measured:.7g}", flush=True)


def gap_channels_first():
    for shape in [(16, 2, 2), (2, 4, 4)]:
        x = keras.Input(shape)
        model = keras.Model(x, keras.layers.GlobalAveragePooling2D(data_format="channels_first")(x))
        exact = l2_norm(affine_matrix(lambda z: model(z).numpy(), shape))
        show(f"GlobalAveragePooling2D(channels_first) on {shape}", model_lipschitz_bound(model), exact)


def dropout_training_true():
    x = keras.Input((64,))
    model = keras.Model(x, keras.layers.Dropout(0.5)(x, training=True))
    z = np.random.default_rng(0).normal(size=(4, 64)).astype("float32")
    measured = jacobian_lower(model, z)
    show("Dropout(0.5)(x, training=True) node, model(x, training=False)", model_lipschitz_bound(model), measured)


def lora_dense():
    x = keras.Input((4,))
    dense = keras.layers.Dense(4, use_bias=False, kernel_initializer="identity")
    model = keras.Model(x, dense(x))
    dense.enable_lora(2)
    dense.lora_kernel_a.assign(np.full((4, 2), 3.0, "float32"))
    dense.lora_kernel_b.assign(np.full((2, 4), 3.0, "float32"))
    exact = l2_norm(affine_matrix(lambda z: model(z).numpy(), (4,)))
    show("Dense with LoRA", model_lipschitz_bound(model), exact)


def quantized_dense():
    for scale in (1.0, 1000.0):
        x = keras.Input((4,))
        dense = keras.layers.Dense(4, use_bias=False)
        model = keras.Model(x, dense(x))
        dense.kernel.assign(scale * np.random.default_rng(0).normal(size=(4, 4)).astype("float32"))
        model.quantize("int8")
        exact = l2_norm(affine_matrix(lambda z: model(z).numpy(), (4,)))
        try:
            bound = model_lipschitz_bound(model)
        except Exception as error:  # noqa: BLE001
            print(f"refused   int8 Dense x{scale}: {type(error).__name__}: {str(error)[:120]}")
            continue
        show(f"int8-quantized Dense (weights x{scale})", bound, exact)


def power_iteration(fn, shape, steps=200, seed=0):
    """Largest singular value of a linear map estimated from below (numpy adjoint-free: via tf gradients)."""
    v = tf.Variable(np.random.default_rng(seed).normal(size=(1, *shape)).astype("float32"))
    sigma = 0.0
    for _ in range(steps):
        with tf.GradientTape() as tape:
            y = fn(v)
            objective = 0.5 * tf.reduce_sum(tf.square(y))
        grad = tape.gradient(objective, v)  # A^T A v
        norm = tf.norm(grad)
        v.assign(grad / norm)
        sigma = float(tf.norm(fn(v)))
    return sigma


def large_inputs():
    rng = np.random.default_rng(1)
    cases = [
        ("Conv2D same 3x3 s1 on 48x48x2", keras.layers.Conv2D(3, 3, padding="same", use_bias=False), (48, 48, 2)),
        (
            "Conv2D valid 4x4 s2 on 50x50x2",
            keras.layers.Conv2D(3, 4, strides=2, padding="valid", use_bias=False),
            (50, 50, 2),
        ),
        (
            "Conv2DTranspose same 3 s2 on 40x40x2",
            keras.layers.Conv2DTranspose(2, 3, strides=2, padding="same", use_bias=False),
            (40, 40, 2),
        ),
        (
            "SpectralConv2D circular s2 on 45x45x2",
            lip.SpectralConv2D(3, 3, strides=2, padding="circular", use_bias=False, kernel_initializer="glorot_normal"),
            (45, 45, 2),
        ),
        ("PadConv2D reflect on 48x48x2", lip.PadConv2D(3, 3, padding="reflect", use_bias=False), (48, 48, 2)),
        (
            "AOCConv2D same s2 k3 on 48x48x2",
            lip.AOCConv2D(3, 3, strides=2, padding="same", use_bias=False),
            (48, 48, 2),
        ),
        (
            "AOLConv2D same on 48x48x2",
            lip.AOLConv2D(3, 3, padding="same", use_bias=False, kernel_initializer="glorot_normal"),
            (48, 48, 2),
        ),
    ]
    for tag, layer, shape in cases:
        model = keras.Sequential([keras.Input(shape), layer])
        if hasattr(layer, "kernel") and not hasattr(layer, "effective_kernel"):
            layer.kernel.assign(rng.normal(size=layer.kernel.shape).astype("float32"))
        bound = model_lipschitz_bound(model)
        estimate = power_iteration(lambda v: model(v, training=False), shape)
        show(tag + " (power iteration from below)", bound, estimate)


def mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        w = 1.0 + 2.0**-8 + 2.0**-9  # rounds up to 1 + 2^-7 in bfloat16
        x = keras.Input((1,))
        dense = keras.layers.Dense(1, use_bias=False)
        model = keras.Model(x, dense(x))
        dense.kernel.assign(np.array([[w]], "float32"))
        out = model(np.array([[1.0], [0.0]], "float32")).numpy().astype(np.float64)
        show(
            "stock Dense under mixed_bfloat16 (kernel rounded up)", model_lipschitz_bound(model), out[0, 0] - out[1, 0]
        )
        model = keras.Sequential([keras.Input((1,)), keras.layers.Rescaling(w)])
        out = model(np.array([[1.0], [0.0]], "float32")).numpy().astype(np.float64)
        show("Rescaling under mixed_bfloat16", model_lipschitz_bound(model), out[0, 0] - out[1, 0])
        x = keras.Input((1,))
        model = keras.Model(x, keras.layers.Activation("linear")(x) * w)
        out = model(np.array([[1.0], [0.0]], "float32")).numpy().astype(np.float64)
        show("x * c op under mixed_bfloat16", model_lipschitz_bound(model), out[0, 0] - out[1, 0])
        # LipResidual: s x + (1 - s) f(x) with s and 1 - s each rounded to bfloat16.
        worst = (0.0, None)
        for alpha in np.linspace(-3, 3, 601):
            inner = lip.SpectralDense(1, use_bias=False, kernel_initializer="ones")
            res = lip.LipResidual(inner, alpha_initializer=float(alpha))
            model = keras.Sequential([keras.Input((1,)), res])
            out = model(np.array([[1.0], [0.0]], "float32")).numpy().astype(np.float64)
            gap = (out[0, 0] - out[1, 0]) / model_lipschitz_bound(model)
            if gap > worst[0]:
                worst = (gap, alpha)
            keras.backend.clear_session(free_memory=False)
        print(
            f"{'VIOLATION' if worst[0] > 1 + 1e-6 else 'ok':9s} LipResidual(SpectralDense 1x1) under mixed_bfloat16: "
            f"max measured/bound {worst[0]:.6f} at alpha {worst[1]}"
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")


if __name__ == "__main__":
    names = sys.argv[1:] or [
        "gap_channels_first",
        "dropout_training_true",
        "lora_dense",
        "quantized_dense",
        "mixed_precision",
        "large_inputs",
    ]
    for name in names:
        try:
            globals()[name]()
        except Exception as error:  # noqa: BLE001
            print(f"CRASH     {name}: {type(error).__name__}: {str(error)[:200]}")
