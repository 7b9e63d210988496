"""Defects an independent audit of the caches found (TensorFlow, JAX, PyTorch): a layer's constant changed
after compiled functions had traced it. Each test fails on the code before its fix.

`certify` keeps one compiled forward per model; `Sequential.set_klip_factor` after a `certify` left that trace
(k = 1 built in) running, and it refilled the layers' inference kernel caches with the old constant: the model
then computed a 1-Lipschitz function everywhere while its bound and certificates said 0.25. Setting
`layer.k_coef_lip` on a built layer kept the cached kernel while the bound read the new value.
"""

import keras
import numpy as np
import pytest

from deel_lip_ext._autodiff import compiled_inference
from deel_lip_ext.certification import certify
from deel_lip_ext.layers import AOLDense, FrobeniusDense, SpectralDense
from deel_lip_ext.model import Sequential
from deel_lip_ext.utils import model_lipschitz_bound


def _operator_norm(function, size):
    """Exact norm of a linear map given as a function of a batch: its matrix from the basis, float64 SVD."""
    matrix = np.asarray(keras.ops.convert_to_numpy(function(np.eye(size, dtype="float32"))), dtype=np.float64)
    return np.linalg.svd(matrix, compute_uv=False).max()


def test_set_klip_factor_after_certify_changes_what_the_model_computes():
    keras.utils.set_random_seed(0)
    model = Sequential([keras.Input((4,)), SpectralDense(2, use_bias=False)])
    x = np.random.default_rng(0).standard_normal((8, 4)).astype("float32")
    y = np.zeros(8, "int64")
    certify(model, (x, y), [0.1], verbose=False)  # compiles and caches a forward of this model
    model.set_klip_factor(0.25)
    result = certify(model, (x, y), [0.1], verbose=False)
    assert result.lip_const == pytest.approx(0.25, rel=1e-4)
    for function in (model, lambda batch: model.predict(batch, verbose=0)):
        assert _operator_norm(function, 4) <= model_lipschitz_bound(model) * (1 + 1e-5)
    assert _operator_norm(model, 4) == pytest.approx(0.25, rel=1e-3)


@pytest.mark.parametrize("layer_class", [SpectralDense, FrobeniusDense, AOLDense])
def test_the_constant_of_a_built_layer_cannot_be_changed_behind_its_caches(layer_class):
    unbuilt = layer_class(3)
    unbuilt.k_coef_lip = 2.0  # before build: the constant is still free
    assert unbuilt.k_coef_lip == 2.0
    layer = layer_class(3)
    model = keras.Sequential([keras.Input((4,)), layer])
    model(np.ones((1, 4), "float32"))
    with pytest.raises(AttributeError, match=r"k_coef_lip is fixed once the layer is built.*set_klip_factor"):
        layer.k_coef_lip = 0.25
    assert _operator_norm(model, 4) <= model_lipschitz_bound(model) * (1 + 1e-5)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="an eager jax.lax.cond compiles at every call")
def test_eager_jax_inference_chooses_the_cache_branch_in_python(monkeypatch):
    # Each eager call built a new `cond` (new closures), which JAX compiled again: 0.3 s per call of a
    # 16 x 16 SpectralDense. Eagerly the staleness flag has a value and Python picks the branch.
    import jax

    layer = SpectralDense(16)
    x = np.ones((4, 16), "float32")
    expected = keras.ops.convert_to_numpy(layer(x))
    traced = []

    def no_eager_cond(flag, *branches):
        assert isinstance(flag, jax.core.Tracer), "an eager cond compiles at every call"
        traced.append(flag)
        return jax.lax.cond(flag, *branches)

    monkeypatch.setattr(keras.ops, "cond", no_eager_cond)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), expected, rtol=1e-6)
    layer.kernel.assign(layer.kernel * 2.0 + 0.1)  # stale: the kernel is recomputed, still in Python
    assert not np.allclose(keras.ops.convert_to_numpy(layer(x)), expected)
    compiled = compiled_inference(keras.Sequential([keras.Input((16,)), layer]))
    np.testing.assert_allclose(compiled(x), keras.ops.convert_to_numpy(layer(x)), rtol=1e-6)
    assert traced  # inside a compiled function the cond stays
