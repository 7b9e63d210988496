"""`Dense` -> `GroupSort2` -> `Dense` as one layer whose sort is a ReLU inside a matrix product.

An exported network's dense head (W1: 1568 -> 64, GroupSort2, 64 -> 10) runs its sort as a pass of
its own, an XLA computation on TensorFlow that costs more to launch than to run. Between two
linear layers the sort splits into a linear part and a ReLU, as in `deel_lip_ext.layers.sort_fold`:
with pairs (u, v) = (x A_even + a_even, x A_odd + a_odd), min(u, v) = u - relu(u - v) and
max(u, v) = v + relu(u - v), so for B reading the minima on its even rows and the maxima on its
odd rows, times the sort's k,

    k GroupSort2(x A + a) B + b = x C + c + relu(x D + d) E,

with the composed kernel C = k A B, c = k a B + b, the spread kernel D = A_even - A_odd,
d = a_even - a_odd and the taps E = k (B_odd - B_even). Two matrix products of the input (the
ReLU fused into the second, as oneDNN does for a plain network) and a small one: for W1's head
66,000 multiply-adds per sample instead of 101,000, and no pass for the sort.

The folded kernels are weights of the layer, computed once from the two `Dense` layers' kernels
(`folded_dense_head`); the layer keeps those kernels for its bound, and a call reads only the folded
ones (deriving them in each call cost more than the sort on W1). The bound holds whatever the folded weights are: on
every linear piece of the folded form its Jacobian is C + D S E for a 0/1 diagonal S, and for the
exact fold C* + D* S E* = k A P B with P a permutation (each pair kept or swapped), so

    Lip <= k |A| |B| + |C - C*| + |D - D*| |E| + |D*| |E - E*|,

where |A|, |B| are the two layers' exact constants and the other terms (`fold_discrepancy`) vanish
when the weights are the fold of the kernels; float32 rounding of the fold leaves 1.5e-6 of the bound of
W1's head in l2 (a Frobenius norm bounds each difference), 5e-8 in l_inf.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops
from numpy.typing import ArrayLike

from deel_lip_ext.layers.base import LipschitzBounded, check_k_coef_lip
from deel_lip_ext.layers.fused import call_shapes
from deel_lip_ext.layers.sort_fold import FOLDED_DTYPES, is_pairwise_sort
from deel_lip_ext.lipschitz import stock_layer_lipschitz
from deel_lip_ext.spectrum import linf_kernel_norm

__all__ = ["DenseGroupSort2Dense", "fold_discrepancy", "folded_dense_head", "folded_sorts_between_denses"]

# The fold pays where its multiply-adds are at most this fraction of the two layers' (it also saves the
# sort's pass). W1's head (1568 -> 64 -> 10): 0.66; W2's (8192 -> 256 -> 10): 0.54.
_MAX_COST_RATIO = 0.75
FOLDED_WEIGHTS = ("composed_kernel", "composed_bias", "spread_kernel", "spread_bias", "taps")


def folded_dense_head(
    first_kernel: ArrayLike, first_bias: ArrayLike, second_kernel: ArrayLike, second_bias: ArrayLike, sort_k: float
) -> dict:
    """The folded weights of `Dense(first) -> GroupSort2(k_coef_lip=sort_k) -> Dense(second)`, in float64.

    Args:
        first_kernel: (n, 2h) kernel of the first layer (x -> x A + a; pairs are its columns (2i, 2i + 1)).
        first_bias: (2h,) its bias (zeros for a layer without).
        second_kernel: (2h, m) kernel of the second layer (its rows 2i read the minima, 2i + 1 the maxima).
        second_bias: (m,) its bias.
        sort_k: the sort's `k_coef_lip`.

    Returns:
        {name: float64 array} for the names of `FOLDED_WEIGHTS`: composed_kernel (n, m), composed_bias (m,),
        spread_kernel (n, h), spread_bias (h,), taps (h, m).

    Examples:
        >>> fold = folded_dense_head(np.eye(2), np.zeros(2), np.ones((2, 1)), np.zeros(1), 1.0)
        >>> fold["taps"]  # [[0.]]: max + min = a + b, the sort changes nothing for a sum
    """
    first_kernel, first_bias = np.asarray(first_kernel, np.float64), np.asarray(first_bias, np.float64)
    second_kernel = float(sort_k) * np.asarray(second_kernel, np.float64)
    minima, maxima = slice(0, None, 2), slice(1, None, 2)
    return {
        "composed_kernel": first_kernel @ second_kernel,
        "composed_bias": first_bias @ second_kernel + np.asarray(second_bias, np.float64),
        "spread_kernel": first_kernel[:, minima] - first_kernel[:, maxima],
        "spread_bias": first_bias[minima] - first_bias[maxima],
        "taps": second_kernel[maxima] - second_kernel[minima],
    }


def fold_discrepancy(weights: dict, exact: dict, norm: str = "l2") -> float:
    """How much more than the exact fold's bound the folded form with `weights` may stretch distances.

    |C - C*| + |D - D*| |E| + |D*| |E - E*| for the Jacobians C + D S E of the folded form (see the
    module docstring), with |.| the Frobenius norm for "l2" (an upper bound of the spectral norm) and
    the exact l_inf operator norm for "linf". 0 when the weights are the exact fold.

    Args:
        weights: {name: array} of the folded form's kernels (composed_kernel, spread_kernel, taps).
        exact: the same names, as `folded_dense_head` gives them.
        norm: "l2" or "linf".

    Examples:
        >>> fold_discrepancy(fold, fold)  # 0.0
    """

    def size(matrix):
        matrix = np.asarray(matrix, np.float64)
        return float(np.linalg.norm(matrix)) if norm == "l2" else linf_kernel_norm(matrix)

    composed, spread, taps = (np.asarray(weights[name], np.float64) for name in FOLDED_WEIGHTS[::2])
    return (
        size(composed - exact["composed_kernel"])
        + size(spread - exact["spread_kernel"]) * size(taps)
        + size(exact["spread_kernel"]) * size(taps - exact["taps"])
    )


@keras.saving.register_keras_serializable(package="deel_lip_ext")
class DenseGroupSort2Dense(LipschitzBounded, keras.layers.Layer):
    """`Dense`, `GroupSort2(k_coef_lip=sort_k_coef_lip)`, `Dense` in a row, the sort a ReLU inside a matrix product.

    `vanilla_export` puts it where a stock dense head costs fewer multiply-adds this way
    (`folded_sorts_between_denses`): x C + c + relu(x D + d) E, the folded weights of the module's
    docstring, computed from the two layers' weights when the layer is built (`refold()` computes them
    again after a change to `first` or `second`). The same values as the layers in a row, to float
    rounding. An inference layer: none of its weights is trainable (train the network, then export it).

    Lipschitz constant: `sort_k_coef_lip` times the exact constants of the two `Dense` layers, as
    for the layers in a row, plus `fold_discrepancy` of the folded weights from the exact fold of
    those kernels (after `refold()`, only the float32 rounding of the fold), so the bound holds for
    the function the layer computes even if its folded weights were changed by hand.

    Args:
        first: config of the first `Dense` (as `get_config` gives it): no activation, an even number of units.
        second: config of the second `Dense`: no activation.
        sort_k_coef_lip: the `k_coef_lip` of the GroupSort2 between them (> 0).
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

    Examples:
        >>> layer = DenseGroupSort2Dense({"units": 8}, {"units": 3})
        >>> layer(np.ones((2, 5), "float32")).shape  # (2, 3)
    """

    def __init__(self, first: dict, second: dict, sort_k_coef_lip: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.first = keras.layers.Dense.from_config({**first, "name": first.get("name", "first")})
        self.second = keras.layers.Dense.from_config({**second, "name": second.get("name", "second")})
        self.sort_k_coef_lip = check_k_coef_lip(sort_k_coef_lip)
        _check_foldable(self.first, self.second, self.name)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.first.build(input_shape)
        self.second.build(self.first.compute_output_shape(input_shape))
        self.first.trainable = self.second.trainable = False
        fold = self._exact_fold()
        for name in FOLDED_WEIGHTS:
            setattr(self, name, self.add_weight(name=name, shape=fold[name].shape, trainable=False))
        self._assign(fold)
        super().build(input_shape)

    def _exact_fold(self):
        first, second = ([*layer.get_weights(), np.zeros(layer.units)][:2] for layer in (self.first, self.second))
        return folded_dense_head(*first, *second, self.sort_k_coef_lip)

    def _assign(self, fold):
        for name in FOLDED_WEIGHTS:
            getattr(self, name).assign(fold[name].astype(getattr(self, name).dtype))

    def refold(self) -> None:
        """Compute the folded weights again from `first` and `second` (after their weights were set)."""
        self._assign(self._exact_fold())

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*tuple(input_shape)[:-1], self.second.units)

    def call(self, inputs: ArrayLike):
        # ops.add, not `+`: on TensorFlow it writes a bias as a BiasAdd, which oneDNN runs inside the matrix
        # product with the ReLU after it, as for a stock Dense.
        composed = ops.add(ops.matmul(inputs, self.composed_kernel), self.composed_bias)
        spreads = ops.relu(ops.add(ops.matmul(inputs, self.spread_kernel), self.spread_bias))
        return ops.add(composed, ops.matmul(spreads, self.taps))

    def _lipschitz_constant(self, norm, input_shape):
        # Each pair kept or swapped is a permutation, 1-Lipschitz in every l_p norm.
        kernels = stock_layer_lipschitz(self.first, norm) * stock_layer_lipschitz(self.second, norm)
        exact = self.sort_k_coef_lip * kernels
        stored = {name: ops.convert_to_numpy(getattr(self, name)) for name in FOLDED_WEIGHTS}
        return exact + fold_discrepancy(stored, self._exact_fold(), norm)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            first=self.first.get_config(), second=self.second.get_config(), sort_k_coef_lip=self.sort_k_coef_lip
        )
        return config


def _check_foldable(first, second, name):
    """Refuse a pair of `Dense` configurations that `DenseGroupSort2Dense` does not compute."""
    for role, dense in (("first", first), ("second", second)):
        if dense.activation is not keras.activations.linear:
            raise ValueError(
                f"layer {name!r}: {role!r} must be a Dense without activation, got activation "
                f"{keras.activations.serialize(dense.activation)!r}; keep it as a separate layer."
            )
    if first.units % 2:
        raise ValueError(
            f"layer {name!r}: 'first' needs an even number of units (GroupSort2's pairs), got {first.units}."
        )


def _is_plain_dense(layer):
    """Whether `layer` is a built stock `Dense` (exact class) without activation, quantization or LoRA."""
    return (
        type(layer) is keras.layers.Dense
        and layer.built
        and layer.activation is keras.activations.linear
        and getattr(layer, "quantization_mode", None) is None
        and not getattr(layer, "lora_enabled", False)
        and keras.backend.standardize_dtype(layer.compute_dtype) in FOLDED_DTYPES
    )


def _fold_cost_ratio(inputs, middle, out):
    """Multiply-adds per sample of the folded form over those of the two layers."""
    return (inputs * (out + middle // 2) + middle // 2 * out) / (inputs * middle + middle * out)


def _folds(chain, input_shape):
    """Whether `folded_sorts_between_denses` rewrites `chain` (Dense, sort, Dense) called on `input_shape`."""
    first, sort, second = chain
    if not (_is_plain_dense(first) and _is_plain_dense(second)) or input_shape is None:
        return False
    if input_shape[-1] is None or not is_pairwise_sort(sort, first.units) or first.units % 2:
        return False
    return _fold_cost_ratio(input_shape[-1], first.units, second.units) <= _MAX_COST_RATIO


def folded_sorts_between_denses(
    layers: list[keras.layers.Layer], input_shape: tuple | None = None
) -> list[keras.layers.Layer]:
    """Rewrite exported layers called in a row: `Dense`, GroupSort2, `Dense` become one `DenseGroupSort2Dense`.

    A chain qualifies when both layers are stock `Dense` without activation (nor quantization or
    LoRA), in float32 or float64, the sort is a pairwise sort (`GroupSort2`, or `GroupSort` / `FullSort`
    of group size 2) and the folded form costs at most 3/4 of the multiply-adds of the two layers
    (`_MAX_COST_RATIO`: a wide input and few outputs, a classifier's head). The three layers become
    two `keras.layers.Identity` named as the first two, then a `DenseGroupSort2Dense` named as the
    second `Dense`: the list keeps its length and the network computes the same function.

    Args:
        layers: built layers, in call order, each reading the output of the one before alone.
        input_shape: the shape the first layer is called on (batch dimension first); None: unknown,
            and nothing is rewritten.

    Returns:
        A new list with each qualifying chain replaced (the layers given are not changed).

    Examples:
        >>> head = [keras.layers.Dense(64), GroupSort2(), keras.layers.Dense(10)]
        >>> [type(layer).__name__ for layer in folded_sorts_between_denses(head, (None, 1568))]
        ['Identity', 'Identity', 'DenseGroupSort2Dense']
    """
    rewritten, shapes = list(layers), call_shapes(layers, input_shape)
    index = 0
    while index + 2 < len(rewritten):
        chain = rewritten[index : index + 3]
        if not _folds(chain, shapes[index]):
            index += 1
            continue
        first, sort, second = chain
        folded = DenseGroupSort2Dense(
            first.get_config(), second.get_config(), sort.k_coef_lip, name=second.name, dtype=second.dtype_policy
        )
        folded.build(shapes[index])
        folded.first.set_weights(first.get_weights())
        folded.second.set_weights(second.get_weights())
        folded.refold()
        rewritten[index : index + 3] = [keras.layers.Identity(name=layer.name) for layer in chain[:2]] + [folded]
        index += 3
    return rewritten
