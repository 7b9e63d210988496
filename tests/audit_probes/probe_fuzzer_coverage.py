"""How much does the soundness fuzzer check? Per seed: refused or bounded, the bound/measured ratio; per LAYERS
entry: in how many bounded models it appears. A fuzzer whose models are mostly refused, or whose bounds are far
above the measured slope, cannot catch a bound that is a little too low.

Usage: python tests/audit_probes/probe_fuzzer_coverage.py START STOP
"""

import collections
import sys

import harness  # noqa: F401
import keras
import numpy as np

import lipschitz_fuzz


def layer_types(model):
    seen, stack = set(), list(model.layers)
    while stack:
        layer = stack.pop()
        seen.add(type(layer).__name__)
        stack += list(getattr(layer, "layers", []))
        inner = getattr(layer, "layer", None)
        if inner is not None:
            stack.append(inner)
    return seen


def main(start, stop):
    bounded = collections.Counter()
    refused_by = collections.Counter()
    ratios = {"l2": [], "linf": []}
    n_models = 0
    for seed in range(start, stop):
        model = lipschitz_fuzz.random_model(seed)
        types = layer_types(model)
        n_models += 1
        for outcome in lipschitz_fuzz.check_model(model, ("l2", "linf"), seed):
            if outcome.bound is None:
                refused_by[outcome.norm] += 1
            else:
                for t in types:
                    bounded[(t, outcome.norm)] += 1
                ratios[outcome.norm].append(outcome.lower / outcome.bound if outcome.bound else 0.0)
        keras.backend.clear_session(free_memory=False)
    print(f"models: {n_models}; refused l2: {refused_by['l2']}, linf: {refused_by['linf']}")
    for norm, values in ratios.items():
        values = np.array(values)
        if values.size:
            print(
                f"{norm}: bounded {values.size}, measured/bound quantiles 10/50/90%: "
                f"{np.quantile(values, [0.1, 0.5, 0.9]).round(3)}, "
                f">0.9: {(values > 0.9).sum()}, >0.99: {(values > 0.99).sum()}"
            )
    names = sorted({t for t, _ in bounded})
    print("layer type: bounded models (l2, linf)")
    for name in names:
        print(f"  {name}: {bounded[(name, 'l2')]}, {bounded[(name, 'linf')]}")
    registered = {e.name.split("-")[0] for e in lipschitz_fuzz.LAYERS}
    print("registered entries never bounded (l2):", sorted(n for n in registered if bounded[(n, "l2")] == 0))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
