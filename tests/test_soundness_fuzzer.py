"""Soundness fuzzer: random models either get a clear refusal or a bound above every measured slope.

The generator lives in `tests/lipschitz_fuzz.py` (`LAYERS` is the one list to extend with new
layers). A failure message names the seed: `random_model(seed)` rebuilds the model. The models are
checked as drawn, after a few large Adam steps (`fuzz_trained`: kernels, power-iteration states and
running means far from their initialization, every cached bound stale), of any input size, and
exported (`fuzz_exports`: the export must compute the same function and stay bounded).
"""

import inspect

import keras
import numpy as np
import pytest

from deel_lip_ext import layers as lip
from deel_lip_ext.layers import _bound_cache, base
from deel_lip_ext import lipschitz, model_bound

import lipschitz_fuzz


def _report(outcomes):
    return "; ".join(
        f"seed {o.seed} ({o.norm}): bound {o.bound:.6g} < measured {o.lower:.6g} (replay: random_model({o.seed}))"
        for o in outcomes
        if o.violated
    )


def _assert_sound(outcomes):
    violations = [o for o in outcomes if o.violated]
    assert not violations, _report(outcomes)
    for norm in ("l2", "linf"):
        bounded = [o for o in outcomes if o.norm == norm and o.bound is not None]
        assert bounded, f"every {norm} model was refused: the fuzzer checked nothing"
    for outcome in outcomes:
        if outcome.bound is None:
            assert (
                "lip_const" in outcome.refusal
                or "norm=" in outcome.refusal
                or "bounded" in outcome.refusal
                or ("built" in outcome.refusal)
            ), f"seed {outcome.seed}: unclear refusal {outcome.refusal!r}"


def test_every_library_layer_is_registered():
    covered = {cls for entry in lipschitz_fuzz.LAYERS for cls in entry.classes}
    exported = {obj for obj in vars(lip).values() if inspect.isclass(obj) and obj.__module__.startswith("deel_lip_ext")}
    exported -= {base.LipschitzLayer, base.ParametrizedLayer}
    missing = sorted(cls.__name__ for cls in exported - covered)
    assert not missing, f"add these layers to tests/lipschitz_fuzz.py LAYERS: {missing}"


def test_fuzzer_fast():
    _assert_sound(lipschitz_fuzz.fuzz(range(50)))


def _chunks(first, stop, size):
    """Seed ranges of `size` seeds: a slow test in pieces that pytest-xdist spreads over its workers."""
    return [range(start, min(start + size, stop)) for start in range(first, stop, size)]


@pytest.mark.slow
@pytest.mark.parametrize("seeds", _chunks(1000, 1500, 100), ids=str)
def test_fuzzer_slow(seeds):
    _assert_sound(lipschitz_fuzz.fuzz(seeds))


def test_fuzzer_after_training_fast():
    _assert_sound(lipschitz_fuzz.fuzz_trained(range(10)))


@pytest.mark.slow
@pytest.mark.parametrize("seeds", _chunks(3000, 3150, 50), ids=str)
def test_fuzzer_after_training_slow(seeds):
    _assert_sound(lipschitz_fuzz.fuzz_trained(seeds))


def _assert_exports_sound(results, seeds, share):
    # The others are refused: a lambda given as an activation (Keras cannot rebuild it), or a `call`
    # override the export would not reproduce (a library layer's subclass, a model subclass).
    assert len(results["exported"]) >= share * len(seeds), f"only {len(results['exported'])} exports"
    for seed, refusal in results["refused"].items():
        clear = ("cannot copy layer" in refusal and "lambda" in refusal) or "overrides `call`" in refusal
        assert clear, f"seed {seed}: unclear refusal {refusal!r}"
    _assert_sound(results["outcomes"])


def test_exports_of_fuzzed_models_compute_the_same_function_and_stay_bounded():
    seeds = range(50)
    _assert_exports_sound(lipschitz_fuzz.fuzz_exports(seeds), seeds, share=0.9)


def test_exports_of_fuzzed_any_size_models_compute_the_same_function_and_stay_bounded():
    seeds = range(40)
    results = lipschitz_fuzz.fuzz_exports(seeds, any_size=True)
    _assert_exports_sound(results, seeds, share=0.6)
    assert any("overrides `call`" in refusal for refusal in results["refused"].values())


def test_exports_of_trained_fuzzed_models_compute_the_same_function_and_stay_bounded():
    seeds = range(8)
    _assert_exports_sound(lipschitz_fuzz.fuzz_exports(seeds, trained=True), seeds, share=0.9)


@pytest.mark.slow
@pytest.mark.parametrize(
    "seeds, kind, share",
    [(range(1000, 1300), "plain", 0.9), (range(1000, 1200), "any_size", 0.6), (range(1300, 1400), "trained", 0.9)],
    ids=["plain", "any_size", "trained"],
)
def test_exports_of_fuzzed_models_slow(seeds, kind, share):
    results = lipschitz_fuzz.fuzz_exports(seeds, any_size=kind == "any_size", trained=kind == "trained")
    _assert_exports_sound(results, seeds, share=share)


def test_fuzzer_any_size_fast():
    # Models of unknown input size (bounded for every size), channels-first stock layers, subclasses overriding call.
    _assert_sound(lipschitz_fuzz.fuzz_any_size(range(40)))


@pytest.mark.slow
@pytest.mark.parametrize("seeds", _chunks(3000, 3500, 100), ids=str)
def test_fuzzer_any_size_slow(seeds):
    _assert_sound(lipschitz_fuzz.fuzz_any_size(seeds))


def test_fuzzer_catches_trusted_call_overrides(monkeypatch):
    monkeypatch.setattr(base, "check_bounded_call", lambda layer, bound_methods=(): None)
    monkeypatch.setattr(model_bound, "check_graph_call", lambda model, purpose="": None)
    outcomes = lipschitz_fuzz.fuzz_any_size(range(40), norms=("l2",))
    assert any(o.violated for o in outcomes), "the fuzzer missed a bound that trusts overridden calls"


def test_fuzzer_catches_a_bound_blind_to_run_time_broadcasting(monkeypatch):
    # The second audit's bug: equal symbolic shapes (None, None, None, C) taken as "no broadcasting".
    monkeypatch.setattr(model_bound, "_expansion_unknown", lambda shape, partners: False)
    outcomes = lipschitz_fuzz.fuzz_any_size(range(40), norms=("l2",))
    assert any(o.violated for o in outcomes), "the fuzzer missed a broadcast that unknown sizes hide"


def test_fuzzer_catches_stale_cached_bounds(monkeypatch):
    monkeypatch.setattr(_bound_cache, "_same_arrays", lambda first, second: True)  # a cache blind to training
    outcomes = lipschitz_fuzz.fuzz_trained(range(4), norms=("l2",), focus="trained")
    assert any(o.violated for o in outcomes), "the fuzzer missed bounds cached before training"


def test_fuzzer_catches_channels_first_pooling_bounded_as_channels_last(monkeypatch):
    def channels_last_rule(layer, norm, input_shape):  # the audit's bug: input_shape[1:-1] whatever the layout
        sizes = input_shape[1:-1]
        return 1.0 if norm == "linf" or None in sizes else 1.0 / float(np.prod(sizes)) ** 0.5

    monkeypatch.setitem(lipschitz.STOCK_LAYERS, keras.layers.GlobalAveragePooling2D, channels_last_rule)
    outcomes = lipschitz_fuzz.fuzz_any_size(range(40), norms=("l2",))
    assert any(o.violated for o in outcomes), "the fuzzer missed channels-first pooling bounded as channels-last"


def test_fuzzer_catches_a_bound_that_drops_broadcasting(monkeypatch):
    monkeypatch.setattr(model_bound, "_broadcast_factor", lambda tensor, node, norm: 1.0)
    outcomes = lipschitz_fuzz.fuzz(range(8), norms=("l2",), focus="broadcast")
    assert any(o.violated for o in outcomes), "the fuzzer missed a bound that ignores broadcasting"


def test_fuzzer_catches_a_bound_that_ignores_activations(monkeypatch):
    ignore = lambda activation, owner="": 1.0  # noqa: E731
    monkeypatch.setattr(base, "activation_lipschitz", ignore)
    monkeypatch.setattr(lipschitz, "activation_lipschitz", ignore)
    outcomes = lipschitz_fuzz.fuzz(range(8), norms=("l2",), focus="activation")
    assert any(o.violated for o in outcomes), "the fuzzer missed a bound that ignores activations"
