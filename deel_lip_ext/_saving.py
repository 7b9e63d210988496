"""Configs of objects that hold a live object of their model (a layer, a head, a callable, a loss).

Such an object saves without it, marked, and building it back from that config raises an error naming
the fix, instead of building an object that would silently compute something else (a loss with a logit
scale of 1, a schedule that no longer moves its followers).
"""

from __future__ import annotations

__all__ = ["config_without", "check_saved_whole"]

_UNSAVED_ARGUMENT = "unsaved_argument"


def config_without(config: dict, argument: str, fix: str) -> dict:
    """`config` marked as saved without `argument`; `fix` says how to pass it again.

    Examples:
        >>> config_without({"eps": 0.1}, "head", "HybridIntervalCrossEntropy(zoo.hybrid_head(model), ...)")
        {'eps': 0.1, 'unsaved_argument': ['head', 'HybridIntervalCrossEntropy(zoo.hybrid_head(model), ...)']}
    """
    return {**config, _UNSAVED_ARGUMENT: [argument, fix]}


def check_saved_whole(class_name: str, config: dict, where: str) -> dict:
    """`config` itself, or a `ValueError` if `config_without` marked it.

    Args:
        class_name: the class being built, for the message.
        config: its config.
        where: what to do first, e.g. "Load the model with keras.saving.load_model(path, compile=False)".

    Examples:
        >>> check_saved_whole("LpScheduler", {"p_start": 8.0}, "Build the callback again")
        {'p_start': 8.0}
    """
    unsaved = config.get(_UNSAVED_ARGUMENT)
    if unsaved is None:
        return config
    argument, fix = unsaved
    raise ValueError(
        f"{class_name} was saved with `{argument}`, a live object of its model that a saved config cannot carry. "
        f"{where}, then pass it again: {fix}."
    )
