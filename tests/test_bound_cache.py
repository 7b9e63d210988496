"""Layer bounds are cached per (norm, input shape, config) and never served once a weight changed."""

import keras
import numpy as np
import pytest

from deel_lip_ext.layers import FrobeniusDense, SpectralDense
from deel_lip_ext.utils import model_lipschitz_bound


def _model(layer, features=6):
    model = keras.Sequential([keras.Input((features,)), layer])
    model(np.zeros((1, features), "float32"))
    return model


def _count_computations(monkeypatch, cls):
    calls = []
    original = cls._lipschitz_constant

    def counted(self, norm, input_shape):
        calls.append((norm, input_shape))
        return original(self, norm, input_shape)

    monkeypatch.setattr(cls, "_lipschitz_constant", counted)
    return calls


def test_a_second_bound_of_an_unchanged_model_is_read_from_the_cache(monkeypatch):
    calls = _count_computations(monkeypatch, SpectralDense)
    model = _model(SpectralDense(4))
    first = model_lipschitz_bound(model)
    assert model_lipschitz_bound(model) == first and len(calls) == 1
    model_lipschitz_bound(model, "linf")  # another norm is another entry
    assert len(calls) == 2


def test_a_changed_weight_gives_a_fresh_exact_bound(monkeypatch):
    calls = _count_computations(monkeypatch, FrobeniusDense)
    layer = FrobeniusDense(4, disjoint_neurons=False)
    model = _model(layer)
    rng = np.random.default_rng(0)
    layer.kernel.assign(rng.normal(size=(6, 4)).astype("float32"))
    random_bound = model_lipschitz_bound(model)
    # W / ||W||_F: its exact L2 norm is s_max / sqrt(sum s_i^2), below 1 for a generic W ...
    singular_values = np.linalg.svd(keras.ops.convert_to_numpy(layer.kernel), compute_uv=False)
    assert random_bound == pytest.approx(singular_values[0] / np.linalg.norm(singular_values), rel=1e-5)
    # ... and 1 for a rank-one W: the cache must not serve the bound of the previous weights.
    layer.kernel.assign(np.outer(rng.normal(size=6), rng.normal(size=4)).astype("float32"))
    assert model_lipschitz_bound(model) == pytest.approx(1.0, rel=1e-5)
    assert len(calls) == 2


def test_a_changed_config_gives_a_fresh_bound():
    layer = SpectralDense(4)
    model = _model(layer)
    before = model_lipschitz_bound(model)
    layer.eps_spectral = 1e-6  # a config change (the constant itself is fixed once built: test_audit_caches.py)
    layer._set_built_k_coef_lip(2.0)
    assert model_lipschitz_bound(model) == pytest.approx(2 * before, rel=1e-6)
