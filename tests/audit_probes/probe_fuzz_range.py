"""Run the project's fuzzer (tests/lipschitz_fuzz.py) over a seed range and print every violation (not only the
first failing assertion). Usage: python tests/audit_probes/probe_fuzz_range.py START STOP"""

import sys

import harness  # noqa: F401
import keras

import lipschitz_fuzz

start, stop = int(sys.argv[1]), int(sys.argv[2])
count = 0
for seed in range(start, stop):
    try:
        model = lipschitz_fuzz.random_model(seed)
        for outcome in lipschitz_fuzz.check_model(model, ("l2", "linf"), seed):
            if outcome.violated:
                count += 1
                names = sorted({type(layer).__name__ for layer in model._flatten_layers(include_self=False)})
                print(
                    f"VIOLATION seed {seed} {outcome.norm}: bound {outcome.bound:.6g} < measured "
                    f"{outcome.lower:.6g}; layers {names}",
                    flush=True,
                )
    except Exception as error:  # noqa: BLE001
        print(f"CRASH seed {seed}: {type(error).__name__}: {str(error)[:150]}", flush=True)
    keras.backend.clear_session(free_memory=False)
print(f"seeds {start}..{stop}: {count} violations")
