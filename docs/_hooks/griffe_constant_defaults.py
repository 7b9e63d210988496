"""Griffe extension: show a parameter default that names a module constant as its value.

`SpectralDense(eps_spectral=DEFAULT_EPS_SPECTRAL)` then reads `1e-3` in the Default column of
the API tables and in the signature, instead of a constant's name the reader has to look up.
Only names of module attributes holding a plain literal (number, string, bool, None) are replaced.
"""

import ast

import griffe


def _literal_value(default, loader):
    if not isinstance(default, (griffe.ExprName, griffe.ExprAttribute)):  # CONSTANT or module.CONSTANT
        return None
    try:
        attribute = loader.modules_collection[default.canonical_path]
    except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    while isinstance(attribute, griffe.Alias):
        try:
            attribute = attribute.final_target
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
    if not isinstance(attribute, griffe.Attribute) or attribute.value is None:
        return None
    text = str(attribute.value)
    try:
        ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    return text


class ConstantDefaults(griffe.Extension):
    """Replace constant-name defaults by the constants' literal values, once the package is loaded."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs) -> None:
        for function in _functions(pkg):
            for parameter in function.parameters:
                value = _literal_value(parameter.default, loader)
                if value is not None:
                    parameter.default = value


def _functions(obj, seen=None):
    seen = set() if seen is None else seen
    for member in obj.members.values():
        if member.is_alias or id(member) in seen:
            continue
        seen.add(id(member))
        if member.is_function:
            yield member
        elif member.is_class or member.is_module:
            yield from _functions(member, seen)
