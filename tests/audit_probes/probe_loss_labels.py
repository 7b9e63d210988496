"""Every loss against unusual label shapes: it must either refuse (ValueError) or equal the loss of the canonical
labels. Prints ACCEPTED-DIFFERENT when a shape is accepted and gives another value (silent broadcasting)."""

import harness  # noqa: F401
import numpy as np

from deel_lip_ext import linf, losses

rng = np.random.default_rng(0)
N, C = 6, 4
logits = rng.normal(size=(N, C)).astype("float32")
idx = np.array([0, 3, 1, 2, 2, 1])
onehot = np.eye(C, dtype="float32")[idx]
bin_logits = rng.normal(size=(N, 1)).astype("float32")
bin_labels = np.array([1, 0, 1, 1, 0, 0], "float32")

MULTI = {
    "MulticlassKR": lambda: losses.MulticlassKR(),
    "MulticlassHKR": lambda: losses.MulticlassHKR(),
    "MulticlassHinge": lambda: losses.MulticlassHinge(),
    "MulticlassSoftHKR": lambda: losses.MulticlassSoftHKR(),
    "MultiMargin": lambda: losses.MultiMargin(),
    "CategoricalHinge": lambda: losses.CategoricalHinge(min_margin=1.0),
    "TauCategoricalCrossentropy": lambda: losses.TauCategoricalCrossentropy(tau=2.0),
    "SoftHKR": lambda: losses.SoftHKR(),
    "LseHKR": lambda: losses.LseHKR(),
    "EMMA": lambda: losses.EMMA(epsilon=0.1),
    "LogitAnnealing": lambda: losses.LogitAnnealing(epsilon=0.1),
    "LInfDistHinge": lambda: linf.LInfDistHinge(eps=0.1),
    "ClippedHingeCrossEntropy": lambda: linf.ClippedHingeCrossEntropy(eps=0.1),
}
BINARY = {
    "KR": lambda: losses.KR(),
    "HKR": lambda: losses.HKR(alpha=10.0),
    "HingeMargin": lambda: losses.HingeMargin(),
    "TauBinaryCrossentropy": lambda: losses.TauBinaryCrossentropy(tau=2.0),
}


def value(loss, y, p):
    try:
        return float(loss(y, p))
    except ValueError:
        return "refused"
    except Exception as error:  # noqa: BLE001
        return f"CRASH {type(error).__name__}: {str(error)[:80]}"


for name, make in MULTI.items():
    reference = value(make(), onehot, logits)
    for tag, y, p in [
        ("int (N,)", idx, logits),
        ("int (N,1)", idx[:, None], logits),
        ("one-hot (N,C,1)", onehot[:, :, None], logits),
        ("one-hot (1,C) broadcast", onehot[:1], logits),
        ("one-hot transposed (C,N)", onehot.T, logits) if N != C else ("skip", onehot, logits),
        ("one-hot float64", onehot.astype("float64"), logits),
        ("logits (N,C,1)", onehot[:, :, None], logits[:, :, None]),
    ]:
        got = value(make(), y, p)
        if got == "refused" or tag == "skip":
            continue
        if isinstance(got, str):
            print(f"CRASH     {name} {tag}: {got}")
        elif not np.isclose(got, reference, rtol=1e-5):
            print(f"ACCEPTED-DIFFERENT {name} {tag}: {got:.6g} vs one-hot {reference:.6g}")

for name, make in BINARY.items():
    reference = value(make(), bin_labels[:, None], bin_logits)
    for tag, y, p in [
        ("(N,)", bin_labels, bin_logits),
        ("(N,1,1)", bin_labels[:, None, None], bin_logits),
        ("(1,1)", bin_labels[:1, None], bin_logits),
        ("(N,) vs logits (N,)", bin_labels, bin_logits[:, 0]),
        ("+-1 labels", 2 * bin_labels[:, None] - 1, bin_logits),
    ]:
        got = value(make(), y, p)
        if got == "refused":
            continue
        if isinstance(got, str):
            print(f"CRASH     {name} {tag}: {got}")
        elif not np.isclose(got, reference, rtol=1e-5):
            print(f"ACCEPTED-DIFFERENT {name} {tag}: {got:.6g} vs (N,1) {reference:.6g}")
print("done")
