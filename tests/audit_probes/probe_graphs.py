"""Unusual functional graphs: bound (l2, linf) vs exact Jacobian norms and a pair search.

Each case prints ok / VIOLATION / REFUSED (with the start of the message) / CRASH.
"""

import sys

import harness  # noqa: F401
import keras
import numpy as np
from keras import ops

from deel_lip_ext import layers as lip
from harness import jacobian_lower, pair_search
from deel_lip_ext.utils import model_lipschitz_bound

rng = np.random.default_rng(0)
CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def dense(units, **kw):
    return keras.layers.Dense(units, kernel_initializer=keras.initializers.RandomNormal(0, 1.0, seed=1), **kw)


@case
def slice_last3():
    x = keras.Input((6,))
    h = dense(6)(x)
    return keras.Model(x, h[..., :3])


@case
def slice_repeat_index():
    x = keras.Input((4,))
    h = dense(4)(x)
    return keras.Model(x, ops.take(h, [0, 0, 0, 0, 0, 0, 0, 0, 0], axis=1))


@case
def lambda_layer():
    x = keras.Input((4,))
    return keras.Model(x, keras.layers.Lambda(lambda t: 10 * t)(dense(4)(x)))


@case
def multiply_layer():
    x = keras.Input((4,))
    return keras.Model(x, keras.layers.Multiply()([dense(4)(x), dense(4)(x)]))


@case
def dot_layer():
    x = keras.Input((4,))
    return keras.Model(x, keras.layers.Dot(axes=1)([dense(4)(x), dense(4)(x)]))


@case
def batchnorm():
    x = keras.Input((4,))
    bn = keras.layers.BatchNormalization()
    m = keras.Model(x, bn(dense(4)(x)))
    bn.moving_variance.assign(np.full(4, 1e-4, "float32"))
    return m


@case
def layernorm():
    x = keras.Input((4,))
    return keras.Model(x, keras.layers.LayerNormalization()(dense(4)(x)))


@case
def dropout():
    x = keras.Input((4,))
    return keras.Model(x, keras.layers.Dropout(0.5)(dense(4)(x)))


@case
def spatial_dropout():
    x = keras.Input((4, 4, 2))
    return keras.Model(x, keras.layers.SpatialDropout2D(0.5)(x))


@case
def gaussian_noise():
    x = keras.Input((4,))
    return keras.Model(x, keras.layers.GaussianNoise(1.0)(x))


@case
def activation_relu_maxvalue_op():
    x = keras.Input((4,))
    return keras.Model(x, keras.activations.relu(dense(4)(x), negative_slope=5.0))


@case
def activation_leaky_op():
    x = keras.Input((4,))
    return keras.Model(x, keras.activations.leaky_relu(dense(4)(x), negative_slope=5.0))


@case
def activation_elu_alpha_op():
    x = keras.Input((4,))
    return keras.Model(x, keras.activations.elu(dense(4)(x), alpha=5.0))


@case
def activation_celu_op():
    x = keras.Input((4,))
    return keras.Model(x, keras.activations.celu(dense(4)(x) * 10.0, alpha=0.1))


@case
def relu_layer_maxvalue():
    x = keras.Input((4,))
    return keras.Model(x, keras.layers.ReLU(max_value=1.0, negative_slope=3.0)(dense(4)(x)))


@case
def prelu():
    x = keras.Input((4,))
    p = keras.layers.PReLU()
    m = keras.Model(x, p(dense(4)(x)))
    p.alpha.assign(np.full((4,), 7.0, "float32"))
    return m


@case
def softmax_layer_axis():
    x = keras.Input((3, 4))
    return keras.Model(x, keras.layers.Softmax(axis=1)(x * 1.0))


@case
def concat_same_twice():
    x = keras.Input((4,))
    h = dense(4)(x)
    return keras.Model(x, keras.layers.Concatenate()([h, h, h]))


@case
def broadcast_add_op_const():
    x = keras.Input((1,))
    return keras.Model(x, ops.add(x, np.zeros((64,), "float32")))


@case
def broadcast_mul_const_bigger():
    x = keras.Input((1,))
    return keras.Model(x, x * np.ones((64,), "float32"))


@case
def broadcast_maximum_op():
    x = keras.Input((1,))
    return keras.Model(x, ops.maximum(x, np.zeros((64,), "float32")))


@case
def broadcast_subtract_layer():
    x = keras.Input((4,))
    a = dense(1)(x)
    b = dense(16)(x)
    return keras.Model(x, keras.layers.Subtract()([a, b]))


@case
def broadcast_minimum_layer():
    x = keras.Input((4,))
    a = dense(1)(x)
    b = dense(16)(x)
    return keras.Model(x, keras.layers.Minimum()([a, b]))


@case
def broadcast_concat_rank():
    x = keras.Input((4,))
    a = ops.expand_dims(dense(4)(x), -1)
    return keras.Model(x, ops.broadcast_to(a, (1, 4, 8)) if False else ops.tile(a, (1, 1, 8)))


@case
def op_sum_axis():
    x = keras.Input((16,))
    return keras.Model(x, ops.sum(x, axis=-1, keepdims=True))


@case
def op_mean_axis():
    x = keras.Input((16,))
    return keras.Model(x, ops.mean(x, axis=-1, keepdims=True) * 16.0)


@case
def op_repeat():
    x = keras.Input((4,))
    return keras.Model(x, ops.repeat(x, 16, axis=-1))


@case
def op_square():
    x = keras.Input((4,))
    return keras.Model(x, ops.square(x))


@case
def op_abs_times():
    x = keras.Input((4,))
    return keras.Model(x, ops.abs(x) * 3.0)


@case
def op_clip():
    x = keras.Input((4,))
    return keras.Model(x, ops.clip(x * 5.0, -1.0, 1.0))


@case
def op_where():
    x = keras.Input((4,))
    return keras.Model(x, ops.where(x > 0, x * 5.0, x))


@case
def op_stop_gradient():
    x = keras.Input((4,))
    return keras.Model(x, ops.stop_gradient(x * 5.0))


@case
def op_cast():
    x = keras.Input((4,))
    return keras.Model(x, ops.cast(x * 5.0, "float16"))


@case
def op_multiply_keyword():
    x = keras.Input((4,))
    return keras.Model(x, ops.multiply(x, x2=7.0))


@case
def op_divide_keyword():
    x = keras.Input((4,))
    return keras.Model(x, ops.divide(x, x2=0.1))


@case
def op_true_divide_by_tensor():
    x = keras.Input((4,))
    return keras.Model(x, ops.true_divide(1.0, dense(4)(x)))


@case
def op_multiply_by_variable():
    x = keras.Input((4,))
    v = keras.Variable(np.full((4,), 9.0, "float32"))
    return keras.Model(x, x * v)


@case
def op_matmul_const():
    x = keras.Input((4,))
    return keras.Model(x, ops.matmul(x, np.full((4, 4), 3.0, "float32")))


@case
def op_einsum():
    x = keras.Input((4,))
    return keras.Model(x, ops.einsum("bi,ij->bj", x, np.full((4, 4), 3.0, "float32")))


@case
def op_flip():
    x = keras.Input((4,))
    return keras.Model(x, ops.flip(x, axis=-1))


@case
def op_squeeze_expand():
    x = keras.Input((4, 1))
    return keras.Model(x, ops.expand_dims(ops.squeeze(x, axis=-1), 1))


@case
def op_reshape_to_batch_none():
    x = keras.Input((4, 4))
    return keras.Model(x, ops.reshape(x, (-1, 4)))


@case
def op_transpose_axes_none_3d():
    x = keras.Input((4, 4))
    return keras.Model(x, ops.transpose(x, (0, 2, 1)) * 2.0)


@case
def op_add_same_tensor_twice():
    x = keras.Input((4,))
    h = dense(4)(x)
    return keras.Model(x, ops.add(h, h))


@case
def op_multiply_same_tensor_twice_by_const():
    x = keras.Input((4,))
    return keras.Model(x, ops.multiply(3.0, x))


@case
def op_negative_broadcast():
    x = keras.Input((1,))
    return keras.Model(x, -x + np.zeros((64,), "float32"))


@case
def op_sigmoid_scaled():
    x = keras.Input((4,))
    return keras.Model(x, ops.sigmoid(x * 10.0))


@case
def op_relu6():
    x = keras.Input((4,))
    return keras.Model(x, ops.relu6(x))


@case
def op_softplus_beta():
    x = keras.Input((4,))
    return keras.Model(x, ops.softplus(x * 3.0))


@case
def activation_layer_softmax_big():
    x = keras.Input((4,))
    return keras.Model(x, keras.layers.Activation("softmax")(x * 1.0))


@case
def activation_log_softmax():
    x = keras.Input((4,))
    return keras.Model(x, keras.layers.Activation("log_softmax")(x))


@case
def multi_input_shared():
    a, b = keras.Input((4,)), keras.Input((4,))
    d = dense(4)
    return keras.Model([a, b], keras.layers.Add()([d(a), d(b)]))


@case
def nested_model_called_twice():
    inner_in = keras.Input((4,))
    inner = keras.Model(inner_in, dense(4)(inner_in))
    x = keras.Input((4,))
    return keras.Model(x, inner(inner(x)))


@case
def nested_sequential_in_functional():
    inner = keras.Sequential([keras.Input((4,)), dense(4), keras.layers.ReLU(), dense(4)])
    x = keras.Input((4,))
    return keras.Model(x, keras.layers.Add()([inner(x), x]))


@case
def nested_model_multiple_outputs():
    inner_in = keras.Input((4,))
    h = dense(4)(inner_in)
    inner = keras.Model(inner_in, [h, h * 3.0])
    x = keras.Input((4,))
    p, q = inner(x)
    return keras.Model(x, keras.layers.Add()([p, q]))


@case
def nested_model_two_inputs_same_tensor():
    a_in, b_in = keras.Input((4,)), keras.Input((4,))
    inner = keras.Model([a_in, b_in], keras.layers.Add()([a_in, b_in]))
    x = keras.Input((4,))
    h = dense(4)(x)
    return keras.Model(x, inner([h, h]))


@case
def nested_model_multiple_outputs_concat():
    inner_in = keras.Input((4,))
    h = dense(4)(inner_in)
    inner = keras.Model(inner_in, [h * 5.0, h * 0.0 + 1.0])
    x = keras.Input((4,))
    p, q = inner(x)
    return keras.Model(x, p)


@case
def output_is_input():
    x = keras.Input((4,))
    return keras.Model(x, [x, x * 2.0])


@case
def rescaling_offset_array():
    x = keras.Input((4,))
    return keras.Model(x, keras.layers.Rescaling(scale=np.array([1.0, 2.0, 8.0, 1.0], "float32"))(x))


@case
def normalization_layer():
    x = keras.Input((4,))
    n = keras.layers.Normalization(mean=0.0, variance=1e-4)
    return keras.Model(x, n(x))


@case
def upsampling_bilinear():
    x = keras.Input((3, 3, 1))
    return keras.Model(x, keras.layers.UpSampling2D(2, interpolation="bilinear")(x))


@case
def maxpool_overlap():
    x = keras.Input((6, 6, 1))
    return keras.Model(x, keras.layers.MaxPooling2D(3, strides=1, padding="same")(x))


@case
def avgpool_same_overlap():
    x = keras.Input((6, 6, 1))
    return keras.Model(x, keras.layers.AveragePooling2D(3, strides=1, padding="same")(x))


@case
def avgpool_channels_first():
    x = keras.Input((1, 6, 6))
    return keras.Model(x, keras.layers.AveragePooling2D(2, strides=1, padding="same", data_format="channels_first")(x))


@case
def global_avg_keepdims_channels_first():
    x = keras.Input((2, 4, 4))
    return keras.Model(x, keras.layers.GlobalAveragePooling2D(data_format="channels_first")(x))


@case
def maxpool_channels_first_overlap():
    x = keras.Input((1, 6, 6))
    return keras.Model(x, keras.layers.MaxPooling2D(3, strides=1, padding="same", data_format="channels_first")(x))


@case
def zero_padding_then_global_avg():
    x = keras.Input((2, 2, 1))
    return keras.Model(x, keras.layers.GlobalAveragePooling2D()(keras.layers.Cropping2D(((0, 1), (0, 1)))(x)))


@case
def global_avg_none_size():
    x = keras.Input((None, None, 1))
    return keras.Model(x, keras.layers.GlobalAveragePooling2D()(x))


@case
def repeat_vector():
    x = keras.Input((4,))
    return keras.Model(x, keras.layers.RepeatVector(9)(x))


@case
def conv1d_stock_causal_dilated():
    x = keras.Input((8, 1))
    return keras.Model(x, keras.layers.Conv1D(2, 3, padding="causal", dilation_rate=2)(x))


@case
def conv2d_stock_channels_first():
    x = keras.Input((1, 5, 5))
    return keras.Model(x, keras.layers.Conv2D(2, 3, padding="same", data_format="channels_first")(x))


@case
def conv2dtranspose_channels_first():
    x = keras.Input((1, 3, 3))
    return keras.Model(
        x, keras.layers.Conv2DTranspose(2, 3, strides=2, data_format="channels_first", kernel_initializer="ones")(x)
    )


@case
def conv2dtranspose_output_padding():
    x = keras.Input((3, 3, 1))
    return keras.Model(
        x,
        keras.layers.Conv2DTranspose(2, 3, strides=2, output_padding=1, padding="valid", kernel_initializer="ones")(x),
    )


@case
def conv1d_stock_valid_stride():
    x = keras.Input((9, 2))
    return keras.Model(x, keras.layers.Conv1D(3, 4, strides=2, padding="valid")(x))


@case
def conv1d_stock_channels_first():
    x = keras.Input((2, 9))
    return keras.Model(x, keras.layers.Conv1D(3, 3, padding="same", data_format="channels_first")(x))


@case
def permute_layer():
    x = keras.Input((3, 4))
    return keras.Model(x, keras.layers.Permute((2, 1))(x) * 2.0)


@case
def flatten_channels_first():
    x = keras.Input((2, 3, 3))
    return keras.Model(x, keras.layers.Flatten(data_format="channels_first")(x))


@case
def dense_on_3d():
    x = keras.Input((3, 4))
    return keras.Model(x, dense(5)(x))


@case
def einsum_dense():
    x = keras.Input((4,))
    return keras.Model(x, keras.layers.EinsumDense("ab,bc->ac", output_shape=4)(x))


@case
def embedding_like_identity():
    x = keras.Input((4,))
    return keras.Model(x, keras.layers.Identity()(x) * 1.0)


@case
def cropping_zero_pad_then_conv_stock():
    x = keras.Input((4, 4, 1))
    h = keras.layers.ZeroPadding2D(((3, 0), (0, 0)))(x)
    return keras.Model(x, keras.layers.Conv2D(1, (4, 1), padding="valid", kernel_initializer="ones")(h))


@case
def circular_padding_then_stock_conv_stride2():
    x = keras.Input((4, 4, 1))
    h = lip.CircularPadding2D(1)(x)
    return keras.Model(x, keras.layers.Conv2D(2, 3, strides=2, padding="valid", kernel_initializer="ones")(h))


@case
def circular_padding_then_stock_conv_pair_shared_pad():
    x = keras.Input((4, 4, 1))
    h = lip.CircularPadding2D(1)(x)
    a = keras.layers.Conv2D(1, 3, padding="valid", kernel_initializer="ones")(h)
    return keras.Model(
        x, keras.layers.Concatenate()([a, keras.layers.Flatten()(h)[:, :16, None, None][:, :, :, 0:1] if False else a])
    )


@case
def padding2d_reflect_then_conv_none():
    x = keras.Input((None, None, 1))
    h = lip.Padding2D(1, mode="reflect")(x)
    return keras.Model(x, keras.layers.Conv2D(1, 3, padding="valid", kernel_initializer="ones")(h))


@case
def padding2d_then_conv_with_activation():
    x = keras.Input((4, 4, 1))
    h = lip.Padding2D(1, mode="symmetric")(x)
    return keras.Model(x, keras.layers.Conv2D(1, 3, padding="valid", activation="gelu", kernel_initializer="ones")(h))


@case
def circular_then_conv_bigger_pad_than_needed():
    x = keras.Input((4, 4, 1))
    h = lip.CircularPadding2D(2)(x)
    return keras.Model(x, keras.layers.Conv2D(1, 3, padding="valid", kernel_initializer="ones")(h))


@case
def circular_pad_asym_then_conv_even_kernel():
    x = keras.Input((4, 4, 1))
    h = lip.CircularPadding2D(((1, 0), (1, 0)))(x)
    return keras.Model(x, keras.layers.Conv2D(1, 2, padding="valid", kernel_initializer="ones")(h))


@case
def padding2d_then_conv_dilated():
    x = keras.Input((5, 5, 1))
    h = lip.Padding2D(2, mode="reflect")(x)
    return keras.Model(x, keras.layers.Conv2D(1, 3, padding="valid", dilation_rate=2, kernel_initializer="ones")(h))


def exact_lower(model):
    shape = tuple(model.inputs[0].shape[1:]) if not isinstance(model.inputs, list) or len(model.inputs) == 1 else None
    if shape is None:
        return None
    shape = tuple(4 if s is None else s for s in shape)
    x = rng.normal(size=(8,) + shape).astype("float32")
    out = {}
    for norm in ("l2", "linf"):
        out[norm] = max(jacobian_lower(model, x, norm), pair_search(model, x[:4], norm, steps=25))
    return out


def main(names):
    for name, fn in CASES.items():
        if names and name not in names:
            continue
        try:
            model = fn()
        except Exception as error:  # noqa: BLE001
            print(f"BUILDFAIL {name}: {type(error).__name__}: {str(error)[:150]}")
            continue
        try:
            lower = exact_lower(model)
        except Exception as error:  # noqa: BLE001
            lower = None
            print(f"  (no lower for {name}: {type(error).__name__}: {str(error)[:100]})")
        for norm in ("l2", "linf"):
            try:
                bound = model_lipschitz_bound(model, norm)
            except ValueError as error:
                print(f"REFUSED   {name} {norm}: {str(error)[:140]}")
                continue
            except Exception as error:  # noqa: BLE001
                print(f"CRASH     {name} {norm}: {type(error).__name__}: {str(error)[:160]}")
                continue
            low = None if lower is None else lower[norm]
            bad = low is not None and low > bound * (1 + 1e-4) + 1e-6
            print(f"{'VIOLATION' if bad else 'ok':9s} {name} {norm}: bound {bound:.6g} measured {low}")
        keras.backend.clear_session(free_memory=False)


if __name__ == "__main__":
    main(set(sys.argv[1:]))
