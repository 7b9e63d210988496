"""Measuring tools: exact layer singular values, whole-model bounds, empirical constants.

* `conv_singular_values(kernel, input_size)`: every singular value of a
  circular stride-1 convolution (FFT method of Sedghi, Gupta & Long, 2019).
* `compute_layer_sv(layer)`: exact (min, max) singular values of one layer
  for its real padding and stride (upper bound for the max on large inputs).
* `compute_model_sv(model)` and `model_lipschitz_bound(model)`: per-layer
  values and a certified upper bound of the whole model's L2 Lipschitz
  constant (products along the graph, sums over `Add` branches).
* `evaluate_lip_const(model, x)`: largest Jacobian spectral norm over a batch,
  a lower bound of the constant.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from numpy.typing import ArrayLike

from deel_lip_ext.layers.base import LipschitzLayer, ParametrizedLayer
from deel_lip_ext.layers.convolutional import circular_pad_widths
from deel_lip_ext.layers.padding import CircularPadding2D, circular_pad

__all__ = [
    "conv_singular_values",
    "conv_operator_matrix",
    "operator_singular_values",
    "compute_layer_sv",
    "layer_singular_values",
    "compute_model_sv",
    "model_lipschitz_bound",
    "evaluate_lip_const",
]

# Above this many input entries, a conv's dense operator matrix is too big to SVD.
MAX_DENSE_OPERATOR_SIZE = 3072


def conv_singular_values(kernel: ArrayLike, input_size: int | tuple[int, int]) -> np.ndarray:
    """All singular values of the circular, stride-1 convolution with `kernel` on n x n inputs.

    Args:
        kernel: array (kh, kw, c_in, c_out) (Keras layout; cross-correlation
            or convolution give the same singular values).
        input_size: n, or (n_h, n_w).

    Returns:
        A float64 array of `n_h * n_w * min(c_in, c_out)` singular values (descending per frequency).

    Examples:
        >>> sv = conv_singular_values(layer.effective_kernel(), 28)
        >>> sv.max() <= 1 + 1e-4
    """
    kernel = np.asarray(keras.ops.convert_to_numpy(kernel), dtype=np.float64)
    if kernel.ndim != 4:
        raise ValueError(f"kernel must have 4 dimensions (kh, kw, c_in, c_out), got shape {kernel.shape}.")
    n_h, n_w = (input_size, input_size) if np.isscalar(input_size) else tuple(input_size)
    if kernel.shape[0] > n_h or kernel.shape[1] > n_w:
        # A kernel larger than the image wraps around: fold it onto the torus.
        folded = np.zeros((n_h, n_w) + kernel.shape[2:])
        for a in range(kernel.shape[0]):
            for b in range(kernel.shape[1]):
                folded[a % n_h, b % n_w] += kernel[a, b]
        kernel = folded
    symbols = np.fft.fft2(kernel, s=(n_h, n_w), axes=(0, 1))
    return np.linalg.svd(symbols, compute_uv=False).ravel()


def conv_operator_matrix(
    kernel: ArrayLike, input_shape: tuple[int, ...], strides: int | tuple[int, int] = (1, 1), padding: str = "same"
):
    """Dense matrix (in_size, out_size) of a bias-free convolution, built from unit impulses.

    Args:
        kernel: array (kh, kw, c_in, c_out).
        input_shape: (H, W, c_in).
        strides: pair of ints.
        padding: "same", "valid" or "circular".
    """
    kernel = np.asarray(keras.ops.convert_to_numpy(kernel))
    size = int(np.prod(input_shape))
    impulses = np.eye(size, dtype=kernel.dtype).reshape((size,) + tuple(input_shape))
    if padding == "circular":
        impulses = circular_pad(impulses, circular_pad_widths(kernel.shape[:2]))
        padding = "valid"
    out = keras.ops.conv(impulses, kernel, strides=tuple(strides), padding=padding)
    return np.asarray(keras.ops.convert_to_numpy(out)).reshape(size, -1)


def operator_singular_values(matrix: ArrayLike):
    """Singular values (descending) of a dense operator matrix, via the smaller Gram matrix.

    Eigenvalues of M M^T (or M^T M) cost far less than an SVD of a very
    rectangular M (e.g. 784 x 25088 for a conv on MNIST); float64 keeps the
    largest values exact to ~1e-15 relative, the smallest to ~1e-8 absolute.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    gram = matrix @ matrix.T if matrix.shape[0] <= matrix.shape[1] else matrix.T @ matrix
    return np.sqrt(np.clip(np.linalg.eigvalsh(gram)[::-1], 0.0, None))


def _conv_sv(kernel, input_shape, strides, padding):
    """(min, max) singular values of a conv operator: exact, or a certified max bound on big inputs."""
    height, width, channels = input_shape
    strides = tuple(strides)
    if height is not None and width is not None:
        if padding == "circular" and strides == (1, 1):
            values = conv_singular_values(kernel, (height, width))
            n_values = height * width * min(kernel.shape[2], kernel.shape[3])
            return float(values.min()) if values.size >= n_values else 0.0, float(values.max())
        if height * width * channels <= MAX_DENSE_OPERATOR_SIZE:
            values = operator_singular_values(conv_operator_matrix(kernel, input_shape, strides, padding))
            full_rank = min(height * width * channels, values.size)
            return float(values[:full_rank].min()), float(values.max())
    if height is None or width is None:
        # Any size: each input pixel is in at most ceil(k/s) windows per axis.
        overlap = np.prod([math.ceil(k / s) for k, s in zip(kernel.shape[:2], strides)])
        return 0.0, float(math.sqrt(overlap) * np.linalg.norm(kernel.reshape(-1, kernel.shape[-1]), 2))
    # Large input: a zero-padded conv is a sub-matrix of the circular conv on a
    # torus of size n + k - 1, a strided one a row subset of the stride-1 one,
    # so the circular symbol's largest value bounds it; no useful lower bound.
    size = (height, width) if padding == "circular" else (height + kernel.shape[0] - 1, width + kernel.shape[1] - 1)
    return 0.0, float(conv_singular_values(kernel, size).max())


def layer_singular_values(layer: keras.layers.Layer, input_shape: tuple[int | None, ...]=None):
    """The whole spectrum of a Dense/Conv2D-like layer's linear operator (for histograms).

    Dense: SVD of the (constrained) kernel. Convolution: exact on small
    inputs (dense operator) and for circular stride-1 (FFT at the input
    size); otherwise the spectrum of the circular convolution on the
    enclosing torus, whose largest value bounds the real one.

    Examples:
        >>> values = layer_singular_values(model.get_layer("conv1"))
    """
    if hasattr(layer, "singular_values"):
        return layer.singular_values()
    input_shape = tuple(input_shape) if input_shape is not None else _layer_input_shape(layer)
    if isinstance(layer, ParametrizedLayer):
        kernel, strides, padding = keras.ops.convert_to_numpy(layer.effective_kernel()), getattr(layer, "strides", None), getattr(layer, "padding", None)
    elif isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
        kernel, strides, padding = keras.ops.convert_to_numpy(layer.kernel), getattr(layer, "strides", None), getattr(layer, "padding", None)
    else:
        raise ValueError(f"layer_singular_values needs a Dense or Conv2D-like layer, got {type(layer).__name__}.")
    if kernel.ndim == 2:
        return np.linalg.svd(kernel, compute_uv=False)
    height, width, channels = input_shape[1:]
    if padding == "circular" and tuple(strides) == (1, 1):
        return conv_singular_values(kernel, (height, width))
    if height * width * channels <= MAX_DENSE_OPERATOR_SIZE:
        return operator_singular_values(conv_operator_matrix(kernel, input_shape[1:], strides, padding))
    size = (height, width) if padding == "circular" else (height + kernel.shape[0] - 1, width + kernel.shape[1] - 1)
    return conv_singular_values(kernel, size)


def _plain_kernel_sv(layer, input_shape):
    """(min, max) of a stock Dense/Conv2D layer's linear part (bias and activation excluded)."""
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    if isinstance(layer, keras.layers.Dense):
        values = np.linalg.svd(kernel, compute_uv=False)
        return float(values.min()), float(values.max())
    if layer.dilation_rate != (1, 1) or getattr(layer, "groups", 1) != 1:
        return None
    return _conv_sv(kernel, input_shape[1:], layer.strides, layer.padding)


def _layer_input_shape(layer):
    shapes = getattr(layer, "_build_shapes_dict", None) or {}
    shape = next(iter(shapes.values()), None)
    if shape is None:
        try:
            shape = layer.input.shape
        except (AttributeError, ValueError):
            return None
    return tuple(shape)


def _activation_sv(layer):
    name = getattr(layer.activation, "__name__", None)
    if name == "linear":
        return 1.0, 1.0
    if name in ("relu", "sigmoid", "tanh"):
        return 0.0, 1.0
    return None


def compute_layer_sv(layer: keras.layers.Layer, input_shape: tuple[int, ...] | None=None):
    """Exact (min, max) singular values of one layer's linear operator, or its Lipschitz range.

    * deel-lip-ext parametrized layers: computed from a fresh
      `effective_kernel()` for the layer's own padding, stride and input size
      (dense SVD; FFT for circular stride-1 convolutions; dense operator
      matrix for other convolutions on small inputs, and on big inputs a
      certified upper bound for the max with min reported as 0).
    * Parameter-free Lipschitz layers (GroupSort, MaxMin, pooling,
      downsampling, ...): (k, k): their Jacobian is k times a partial
      isometry almost everywhere.
    * Stock `Dense`/`Conv2D`: their kernel, bias and activation excluded.
    * ReLU/sigmoid/tanh: (0, 1); Flatten, Reshape, Dropout, Input: (1, 1).
    * Anything else: `None` (unknown).

    Args:
        layer: a built Keras layer.
        input_shape: the layer's input shape (defaults to its build shape).

    Examples:
        >>> compute_layer_sv(SpectralDense(8, k_coef_lip=2.0))  # after build -> (2.0, 2.0)
    """
    input_shape = tuple(input_shape) if input_shape is not None else _layer_input_shape(layer)
    if hasattr(layer, "lipschitz_sv"):
        # Layers whose operator is more than one kernel (e.g. downsampling + conv) know it best.
        return layer.lipschitz_sv()
    if isinstance(layer, ParametrizedLayer):
        kernel = keras.ops.convert_to_numpy(layer.effective_kernel())
        if kernel.ndim == 2:
            values = np.linalg.svd(kernel, compute_uv=False)
            return float(values.min()), float(values.max())
        return _conv_sv(kernel, input_shape[1:], layer.strides, layer.padding)
    if isinstance(layer, keras.Model):
        return 0.0, model_lipschitz_bound(layer)
    if isinstance(layer, LipschitzLayer):
        k = getattr(layer, "k_coef_lip", 1.0)
        return k, k
    if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)) and not isinstance(
        layer, (keras.layers.Conv2DTranspose, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)
    ):
        act = _activation_sv(layer) if layer.activation is not None else (1.0, 1.0)
        if act is None:
            return None
        if not layer.built:
            raise ValueError(f"Layer {layer.name!r} must be built before its singular values can be computed.")
        values = _plain_kernel_sv(layer, input_shape)
        return None if values is None else (values[0] * act[0], values[1] * act[1])
    if isinstance(layer, (keras.layers.InputLayer, keras.layers.Flatten, keras.layers.Reshape, keras.layers.Dropout)):
        return 1.0, 1.0
    if isinstance(layer, keras.layers.ReLU):
        if layer.threshold == 0 and layer.negative_slope <= 1 and layer.max_value is None:
            return float(min(layer.negative_slope, 1.0)), 1.0
        return None
    if isinstance(layer, keras.layers.Activation):
        return _activation_sv(layer)
    if isinstance(layer, keras.layers.MaxPooling2D):
        if all(p <= s for p, s in zip(layer.pool_size, layer.strides)) and layer.padding == "valid":
            return 0.0, 1.0
        return None
    return None


def _circular_pair(layer, consumer):
    """Whether `layer` is a CircularPadding2D feeding `consumer`, a valid Conv2D it pads exactly."""
    return (
        isinstance(layer, CircularPadding2D)
        and isinstance(consumer, keras.layers.Conv2D)
        and consumer.padding == "valid"
        and tuple(map(tuple, layer.padding)) == circular_pad_widths(consumer.kernel_size)
    )


def _sequence_sv(layers, input_shape):
    """Per-layer (min, max) for a chain of layers, fusing CircularPadding2D + Conv2D pairs."""
    results = {}
    i = 0
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if nxt is not None and _circular_pair(layer, nxt):
            results[layer.name] = (1.0, 1.0)
            kernel = keras.ops.convert_to_numpy(nxt.kernel)
            results[nxt.name] = _conv_sv(kernel, input_shape[1:], nxt.strides, "circular")
            input_shape = nxt.compute_output_shape(layer.compute_output_shape(input_shape))
            i += 2
            continue
        results[layer.name] = compute_layer_sv(layer, input_shape)
        input_shape = layer.compute_output_shape(input_shape)
        i += 1
    return results


def compute_model_sv(model: keras.Model) -> dict[str, tuple[float, float] | None]:
    """Exact (min, max) singular values of every layer of a model, by layer name.

    Nested models are expanded (their layers' names are prefixed with the
    model name and a slash). Exported models are understood too: a
    `CircularPadding2D` followed by the `Conv2D` it pads counts as one
    circular convolution (the padding alone is not 1-Lipschitz).

    Returns:
        dict name -> (min, max), or None for layers whose value is unknown.

    Examples:
        >>> for name, (lo, hi) in compute_model_sv(model).items(): print(name, lo, hi)
    """
    results = {}
    if isinstance(model, keras.Sequential):
        shape = tuple(model.inputs[0].shape)
        results.update(_sequence_sv(model.layers, shape))
        for layer in model.layers:
            if isinstance(layer, keras.Model):
                results.update({f"{layer.name}/{k}": v for k, v in compute_model_sv(layer).items()})
        return results
    for layer, consumer in _functional_chain(model):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model):
            results.update({f"{layer.name}/{k}": v for k, v in compute_model_sv(layer).items()})
            continue
        if consumer is not None and _circular_pair(layer, consumer):
            in_shape = _layer_input_shape(layer)
            results[layer.name] = (1.0, 1.0)
            results[consumer.name] = _conv_sv(
                keras.ops.convert_to_numpy(consumer.kernel), in_shape[1:], consumer.strides, "circular"
            )
        elif layer.name not in results:
            results[layer.name] = compute_layer_sv(layer)
    return results


def _functional_chain(model):
    """(layer, its single consumer or None) for each layer of a functional model."""
    consumers = {}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for parent in node.parent_nodes:
                consumers.setdefault(id(parent.operation), []).append(layer)
    return [
        (layer, consumers.get(id(layer), [None])[0] if len(consumers.get(id(layer), [])) == 1 else None)
        for layer in model.layers
    ]


def model_lipschitz_bound(model: keras.Model):
    """Certified upper bound of a model's L2 Lipschitz constant.

    Propagates bounds through the graph: a single-input layer multiplies its
    input's bound by its exact largest singular value (`compute_layer_sv`),
    `Add` sums its inputs' bounds, `Concatenate` takes the root of the sum of
    squares, `Subtract` sums, `Average` averages. For a chain this is the
    product of per-layer norms.

    Raises:
        ValueError: naming the first layer whose Lipschitz constant is unknown.

    Examples:
        >>> L = model_lipschitz_bound(model)  # e.g. 1.0000003 for a spectral model
    """
    sv = compute_model_sv(model)

    def layer_bound(layer):
        value = sv.get(layer.name)
        if value is None:
            raise ValueError(
                f"Layer {layer.name!r} ({type(layer).__name__}) has no known Lipschitz constant: "
                "pass the model's constant explicitly (e.g. lip_const=...) or use Lipschitz layers."
            )
        return value[1]

    if isinstance(model, keras.Sequential):
        bound = 1.0
        for layer in model.layers:
            bound *= model_lipschitz_bound(layer) if isinstance(layer, keras.Model) else layer_bound(layer)
        return bound

    bounds = {}
    for layer in _topological_layers(model):
        parents = [bounds[id(p)] for node in layer._inbound_nodes for p in _parent_layers(node)]
        if isinstance(layer, keras.layers.InputLayer):
            bounds[id(layer)] = 1.0
        elif isinstance(layer, (keras.layers.Add, keras.layers.Subtract)):
            bounds[id(layer)] = sum(parents)
        elif isinstance(layer, keras.layers.Average):
            bounds[id(layer)] = sum(parents) / len(parents)
        elif isinstance(layer, keras.layers.Concatenate):
            bounds[id(layer)] = math.sqrt(sum(b * b for b in parents))
        else:
            inner = model_lipschitz_bound(layer) if isinstance(layer, keras.Model) else layer_bound(layer)
            bounds[id(layer)] = inner * max(parents, default=1.0)
    outputs = [bounds[id(t._keras_history.operation)] for t in model.outputs]
    return float(math.sqrt(sum(b * b for b in outputs)) if len(outputs) > 1 else outputs[0])


def _parent_layers(node):
    return [parent.operation for parent in node.parent_nodes]


def _topological_layers(model):
    ordered, seen = [], set()

    def visit(layer):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        for node in layer._inbound_nodes:
            for parent in _parent_layers(node):
                visit(parent)
        ordered.append(layer)

    for layer in model.layers:
        visit(layer)
    return [layer for layer in ordered if any(layer is m for m in model.layers)]


def evaluate_lip_const(model: keras.Model, x: ArrayLike, batch_size: int = 32):
    """Largest spectral norm of the model's input Jacobian over the points `x`.

    A *lower bound* of the Lipschitz constant (exact at those points for
    piecewise-linear networks), computed in inference mode with TensorFlow's
    `batch_jacobian`.

    Args:
        model: a Keras model (TensorFlow backend).
        x: array of inputs.
        batch_size: points per Jacobian batch.

    Examples:
        >>> evaluate_lip_const(model, x_test[:64])  # <= model_lipschitz_bound(model)
    """
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(f"evaluate_lip_const needs the TensorFlow backend, got {keras.backend.backend()!r}.")
    x = np.asarray(x, dtype=model.inputs[0].dtype if model.inputs else "float32")
    best = 0.0
    for start in range(0, len(x), batch_size):
        xb = tf.convert_to_tensor(x[start : start + batch_size])
        with tf.GradientTape() as tape:
            tape.watch(xb)
            # Flatten so that a model with one scalar per sample has a rank-2 output.
            y = tf.reshape(model(xb, training=False), (tf.shape(xb)[0], -1))
        jac = tape.batch_jacobian(y, xb)
        jac = tf.reshape(jac, (tf.shape(jac)[0], tf.shape(jac)[1], -1)).numpy().astype(np.float64)
        best = max(best, float(np.linalg.svd(jac, compute_uv=False)[:, 0].max()))
    return best
