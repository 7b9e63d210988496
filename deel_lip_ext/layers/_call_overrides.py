"""Refusals of user subclasses whose `call` is not the one a library method describes.

A library layer's Lipschitz bound, interval propagation and export all describe the library's
`call`. A user subclass that overrides `call` (e.g. `10 * super().call(x)`) keeps them only where
it also redefines the method that describes its new `call`; otherwise the library refuses, naming
the layer, rather than certify or export another function.
"""

from __future__ import annotations

import keras

__all__ = ["check_bounded_call", "check_exported_call"]

# What a class may define to declare its own bound (see `check_bounded_call`).
_BOUND_METHODS = ("lipschitz_constant", "_lipschitz_constant", "operator_norm", "linf_operator_norm")


def _first_definer(cls, names):
    return next(klass for klass in cls.__mro__ if any(name in vars(klass) for name in names))


def _unmatched_call_owner(layer, methods):
    """The user class defining `layer`'s `call` when none of `methods` is defined next to it or below it, else None.

    A library layer's bound and export describe the library's `call`; a subclass that overrides
    `call` is trusted only where the class defining that `call` (or one below it) also defines one
    of `methods`.
    """
    cls = type(layer)
    call_owner = _first_definer(cls, ("call",))
    if call_owner.__module__.split(".")[0] == __name__.split(".")[0]:
        return None
    if cls.__mro__.index(_first_definer(cls, methods)) <= cls.__mro__.index(call_owner):
        return None
    return call_owner


def check_bounded_call(layer: keras.layers.Layer, bound_methods: tuple[str, ...] = _BOUND_METHODS) -> None:
    """Refuse a layer whose `call` is not the one its Lipschitz bound describes.

    A library layer's bound describes the library's `call`; a subclass that
    overrides `call` (e.g. `10 * super().call(x)`) is trusted only if the
    class defining that `call` (or one below it) also defines one of
    `bound_methods` (default: `lipschitz_constant`, `_lipschitz_constant`,
    `operator_norm`, `linf_operator_norm`; `("interval_bounds",)` for IBP).

    Raises:
        ValueError: naming the layer and its class, and what to do.
    """
    call_owner = _unmatched_call_owner(layer, bound_methods)
    if call_owner is None:
        return
    raise ValueError(
        f"layer {layer.name!r} ({type(layer).__name__}) overrides `call` (in {call_owner.__qualname__}) but not its "
        f"bound, which describes the library's `call`: define {' or '.join(bound_methods)} next to the new `call`, "
        "or pass the model's constant explicitly (lip_const=...)."
    )


def check_exported_call(layer: keras.layers.Layer) -> None:
    """Refuse to export a layer whose `call` is not the one its `vanilla_export` reproduces.

    A library layer exports the stock layers computing the library's `call`; a subclass that
    overrides `call` must define `vanilla_export` (or, for a parametrized layer, `plain_layers`)
    next to it, or its export would compute another function.

    Raises:
        ValueError: naming the layer and its class, and what to do.
    """
    call_owner = _unmatched_call_owner(layer, ("vanilla_export", "plain_layers"))
    if call_owner is None:
        return
    raise ValueError(
        f"layer {layer.name!r} ({type(layer).__name__}) overrides `call` (in {call_owner.__qualname__}) but not its "
        "export, which computes the library's `call`: define vanilla_export (the list of layers computing the new "
        "`call`) or plain_layers next to the new `call`."
    )
