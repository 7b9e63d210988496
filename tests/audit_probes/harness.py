"""Shared helpers of the audit probes: exact operator norms of (affine) models and Jacobian lower bounds."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from deel_lip_ext.utils import model_lipschitz_bound  # noqa: E402


def affine_matrix(fn, in_shape):
    """Dense matrix (in_size, out_size) of an affine map fn (numpy in -> numpy out), f(0) removed, float64."""
    size = int(np.prod(in_shape))
    eye = np.eye(size, dtype="float32").reshape((size,) + tuple(in_shape))
    out = np.asarray(fn(eye), dtype=np.float64).reshape(size, -1)
    zero = np.asarray(fn(np.zeros((1,) + tuple(in_shape), "float32")), dtype=np.float64).reshape(1, -1)
    return out - zero


def l2_norm(matrix):
    return float(np.linalg.svd(matrix, compute_uv=False)[0])


def linf_norm(matrix):
    # matrix is (in, out): y = x @ M; l_inf -> l_inf norm = max over outputs of sum over inputs |M[i, o]|.
    return float(np.max(np.sum(np.abs(matrix), axis=0)))


def model_fn(model):
    return lambda x: keras.ops.convert_to_numpy(model(x, training=False))


def jacobian_lower(model, x, norm="l2"):
    """Largest Jacobian operator norm at the points x (float64 SVD)."""
    x = tf.convert_to_tensor(np.asarray(x, "float32"))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reshape(model(x, training=False), (tf.shape(x)[0], -1))
    jac = tape.batch_jacobian(y, x).numpy().astype(np.float64).reshape(x.shape[0], y.shape[1], -1)
    if norm == "linf":
        return float(np.max(np.sum(np.abs(jac), axis=2)))
    return float(np.max(np.linalg.svd(jac, compute_uv=False)[:, 0]))


def pair_search(model, x, norm="l2", steps=60, step_size=0.02, seed=0, min_gap=1e-2):
    """Best ||f(a)-f(b)|| / ||a-b|| by gradient ascent on pairs (both points move; gap kept >= min_gap)."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, "float32")
    axes = list(range(1, x.ndim))
    a = tf.Variable(x)
    b = tf.Variable(x + 0.05 * rng.normal(size=x.shape).astype("float32"))

    def nrm(v, ax):
        if norm == "linf":
            return tf.reduce_max(tf.abs(v), axis=ax)
        return tf.sqrt(tf.reduce_sum(tf.square(v), axis=ax))

    best = 0.0
    for _ in range(steps):
        with tf.GradientTape() as tape:
            fa = tf.reshape(model(a, training=False), (x.shape[0], -1))
            fb = tf.reshape(model(b, training=False), (x.shape[0], -1))
            ratio = nrm(fa - fb, [1]) / tf.maximum(nrm(a - b, axes), 1e-12)
            obj = tf.reduce_sum(tf.math.log(ratio + 1e-12))
        best = max(best, float(tf.reduce_max(ratio)))
        ga, gb = tape.gradient(obj, [a, b])
        if ga is None:
            break
        for v, g in ((a, ga), (b, gb)):
            v.assign_add(step_size * g / (tf.reduce_max(tf.abs(g), axis=axes, keepdims=True) + 1e-12))
        gap = (b - a).numpy()
        gn = np.sqrt(np.sum(gap**2, axis=tuple(axes), keepdims=True))
        b.assign(a.numpy() + gap * np.maximum(1.0, min_gap / np.maximum(gn, 1e-30)))
    return best


def bound_or_refusal(model, norm="l2"):
    try:
        return model_lipschitz_bound(model, norm), None
    except ValueError as error:
        return None, str(error)


def report(tag, bound, exact, rel=1e-5):
    bad = bound is not None and exact > bound * (1 + rel) + 1e-7
    flag = "VIOLATION" if bad else "ok"
    print(f"{flag:9s} {tag}: bound={bound} exact={exact:.6g}" + (f" ratio={exact / bound:.5f}" if bound else ""))
    return bad
