"""Every non-conv library layer (and a few conv ones with nonlinear parts): lipschitz_constant (l2, linf) vs
Jacobian norms and a pair search at random points of several scales. Prints VIOLATION lines and a summary."""

import sys

import harness  # noqa: F401
import keras
import numpy as np

from deel_lip_ext import layers as lip
from deel_lip_ext.zoo.bcop import NearestUpSampling2D
from harness import jacobian_lower, pair_search, bound_or_refusal

RN = lambda s=1.0, seed=0: keras.initializers.RandomNormal(0.0, s, seed=seed)  # noqa: E731

CASES = [
    (
        "SpectralDense k=2.5 gelu",
        (6,),
        lambda: lip.SpectralDense(5, activation="gelu", k_coef_lip=2.5, kernel_initializer=RN()),
    ),
    ("FrobeniusDense disjoint", (6,), lambda: lip.FrobeniusDense(5, kernel_initializer=RN())),
    (
        "FrobeniusDense k=3",
        (6,),
        lambda: lip.FrobeniusDense(5, disjoint_neurons=False, k_coef_lip=3.0, kernel_initializer=RN()),
    ),
    ("BjorckDense", (6,), lambda: lip.BjorckDense(5, k_coef_lip=0.5)),
    ("AOLDense", (6,), lambda: lip.AOLDense(5, kernel_initializer=RN(2.0))),
    ("ChordDense", (6,), lambda: lip.ChordDense(8, kernel_initializer=RN(2.0))),
    ("ChordDense tiny eps", (6,), lambda: lip.ChordDense(3, kernel_initializer=RN(1e-4), eps=1e-6)),
    ("SLLDense", (6,), lambda: lip.SLLDense(9, kernel_initializer=RN(2.0), bias_initializer=RN(1.0, 1))),
    ("CPLDense", (6,), lambda: lip.CPLDense(9, kernel_initializer=RN(2.0), bias_initializer=RN(1.0, 1))),
    ("SLLConv2D same", (4, 4, 2), lambda: lip.SLLConv2D(3, 3, kernel_initializer=RN(1.0), bias_initializer=RN(1.0, 1))),
    ("SLLConv2D circular", (4, 4, 2), lambda: lip.SLLConv2D(3, 3, padding="circular", kernel_initializer=RN(1.0))),
    ("CPLConv2D same", (4, 4, 2), lambda: lip.CPLConv2D(3, 3, kernel_initializer=RN(1.0), bias_initializer=RN(1.0, 1))),
    ("CPLConv2D circular 5", (5, 5, 1), lambda: lip.CPLConv2D(2, 5, padding="circular", kernel_initializer=RN(1.0))),
    ("LiResNetBlock relu", (4, 4, 2), lambda: lip.LiResNetBlock(3, activation="relu", kernel_initializer=RN(0.5))),
    ("LipResidual(SpectralDense)", (6,), lambda: lip.LipResidual(lip.SpectralDense(6, k_coef_lip=3.0), -2.0)),
    ("LipResidual(Dense)", (6,), lambda: lip.LipResidual(keras.layers.Dense(6, kernel_initializer=RN(2.0)), 0.3)),
    (
        "LipResidual(Seq)",
        (6,),
        lambda: lip.LipResidual(
            keras.Sequential(
                [
                    keras.layers.Dense(6, kernel_initializer=RN(2.0)),
                    keras.layers.ReLU(),
                    keras.layers.Dense(6, kernel_initializer=RN(2.0, 1)),
                ]
            ),
            0.3,
        ),
    ),
    ("LayerCentering", (3, 3, 2), lambda: lip.LayerCentering()),
    ("LayerCentering 1x1", (1, 1, 2), lambda: lip.LayerCentering()),
    ("BatchCentering", (6,), lambda: lip.BatchCentering()),
    ("GroupSort2 k2", (6,), lambda: lip.GroupSort2(k_coef_lip=2.0)),
    ("GroupSort(3)", (6,), lambda: lip.GroupSort(3)),
    ("FullSort", (6,), lambda: lip.FullSort()),
    ("MaxMin", (6,), lambda: lip.MaxMin()),
    ("MaxMinHalves", (6,), lambda: lip.MaxMinHalves()),
    ("CReLU", (6,), lambda: lip.CReLU(k_coef_lip=1.5)),
    ("Householder", (6,), lambda: lip.Householder(theta_initializer=keras.initializers.RandomUniform(0, 6.3, seed=2))),
    ("ScaledAveragePooling2D", (4, 4, 2), lambda: lip.ScaledAveragePooling2D(2)),
    ("ScaledL2NormPooling2D", (4, 4, 2), lambda: lip.ScaledL2NormPooling2D(2)),
    ("ScaledGlobalAveragePooling2D", (3, 3, 2), lambda: lip.ScaledGlobalAveragePooling2D()),
    ("ScaledGlobalL2NormPooling2D", (3, 3, 2), lambda: lip.ScaledGlobalL2NormPooling2D()),
    ("InvertibleDownSampling", (4, 4, 2), lambda: lip.InvertibleDownSampling(2)),
    ("InvertibleUpSampling", (2, 2, 8), lambda: lip.InvertibleUpSampling(2)),
    ("CircularPadding2D 2", (3, 3, 1), lambda: lip.CircularPadding2D(((3, 3), (1, 2)))),
    ("Padding2D reflect", (3, 3, 1), lambda: lip.Padding2D(2, mode="reflect")),
    ("Padding2D symmetric", (2, 2, 1), lambda: lip.Padding2D(2, mode="symmetric")),
    ("LInfDistDense", (6,), lambda: lip.LInfDistDense(5, identity_init=False)),
    ("LInfDistDense negate", (6,), lambda: lip.LInfDistDense(5, negate=True, identity_init=False)),
    ("LInfDistConv2D", (4, 4, 2), lambda: lip.LInfDistConv2D(3, 3, padding="same")),
    ("LInfDistConv2D valid s2", (5, 5, 2), lambda: lip.LInfDistConv2D(3, 3, strides=2, padding="valid")),
    ("NearestUpSampling2D", (3, 3, 1), lambda: NearestUpSampling2D(2, k_coef_lip=1.0)),
    ("NearestUpSampling2D iso", (3, 3, 1), lambda: NearestUpSampling2D(2, isometric=True)),
    ("SpectralConv1D causal?", (7, 2), lambda: lip.SpectralConv1D(3, 3, padding="same", kernel_initializer=RN())),
]


def main(only):
    rng = np.random.default_rng(0)
    for name, shape, make in CASES:
        if only and not any(o in name for o in only):
            continue
        try:
            layer = make()
            model = keras.Sequential([keras.Input(shape), layer])
        except Exception as error:  # noqa: BLE001
            print(f"BUILDFAIL {name}: {type(error).__name__}: {str(error)[:150]}")
            continue
        lows = {"l2": 0.0, "linf": 0.0}
        for scale in (0.1, 1.0, 5.0):
            x = (scale * rng.normal(size=(6,) + shape)).astype("float32")
            for norm in lows:
                try:
                    lows[norm] = max(
                        lows[norm], jacobian_lower(model, x, norm), pair_search(model, x[:3], norm, steps=25)
                    )
                except Exception as error:  # noqa: BLE001
                    print(f"  lower failed {name} {norm}: {type(error).__name__}: {str(error)[:100]}")
        for norm in ("l2", "linf"):
            bound, refusal = bound_or_refusal(model, norm)
            if bound is None:
                print(f"REFUSED   {name} {norm}: {refusal[:110]}")
                continue
            bad = lows[norm] > bound * (1 + 1e-4) + 1e-6
            print(
                f"{'VIOLATION' if bad else 'ok':9s} {name} {norm}: bound {bound:.6g} measured {lows[norm]:.6g}",
                flush=True,
            )
        keras.backend.clear_session(free_memory=False)


if __name__ == "__main__":
    main(sys.argv[1:])
