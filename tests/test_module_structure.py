"""The package's import graph is a strict hierarchy and its modules stay readable.

Read from the source (no import): imports sit at the top of modules, optional
third-party packages go through `deel_lip_ext._optional`, the bottom floors
(parametrizations, spectrum, argument checks) import no layer, the layers import
nothing above them, and no module or function grows past what a maintainer reads
at once.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "deel_lip_ext"
SOURCES = sorted(PACKAGE.rglob("*.py"))
OPTIONAL = ("tensorflow", "tensorflow_datasets", "matplotlib")

# Floors of the hierarchy, bottom first: a module may import its own floor and the ones below.
FLOORS = [
    (
        "deel_lip_ext._validation",
        "deel_lip_ext._optional",
        "deel_lip_ext._xla",
        "deel_lip_ext._loops",
        "deel_lip_ext._pinned_size",
        "deel_lip_ext.spectrum",
    ),
    ("deel_lip_ext.parametrizations", "deel_lip_ext.lipschitz", "deel_lip_ext.distance", "deel_lip_ext.normalizers"),
    ("deel_lip_ext.initializers", "deel_lip_ext.constraints", "deel_lip_ext.regularizers"),
    ("deel_lip_ext.layers", "deel_lip_ext.activations"),
]


def _module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree):
    """(node, imported module name) for every import statement of a module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node, node.module or ""


def _floor(module):
    """The floor of a module: those of `FLOORS`, then every other module, then the zoo on top."""
    for index, floor in enumerate(FLOORS):
        if any(module == name or module.startswith(name + ".") for name in floor):
            return index
    return len(FLOORS) + (module == "deel_lip_ext.zoo" or module.startswith("deel_lip_ext.zoo."))


def test_the_sources_are_read():
    assert len(SOURCES) > 60


def test_no_function_level_import_of_the_package():
    offenders = []
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        top_level = {id(node) for node in tree.body}
        for node, name in _imports(tree):
            if name.startswith("deel_lip_ext") and id(node) not in top_level:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not offenders, f"imports inside functions (a hidden cycle?): {offenders}"


def test_optional_packages_are_imported_through_one_helper():
    offenders = []
    for path in SOURCES:
        if path.name == "_optional.py":
            continue
        tree = ast.parse(path.read_text())
        type_checking = {
            id(child)
            for node in tree.body
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for child in ast.walk(node)
        }
        for node, name in _imports(tree):
            if name.split(".")[0] in OPTIONAL and id(node) not in type_checking:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not offenders, f"optional packages imported outside deel_lip_ext._optional: {offenders}"


def test_imports_go_down_the_hierarchy():
    offenders = []
    for path in SOURCES:
        module = _module_name(path)
        if module == "deel_lip_ext":
            continue
        for node, name in _imports(ast.parse(path.read_text())):
            if name.startswith("deel_lip_ext.") and _floor(name) > _floor(module):
                offenders.append(f"{module} (floor {_floor(module)}) imports {name} (floor {_floor(name)})")
    assert not offenders, f"imports that go up the hierarchy: {offenders}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_modules_and_functions_stay_short(path):
    source = path.read_text()
    assert len(source.splitlines()) <= 500, f"{path.name} has {len(source.splitlines())} lines: split it by concept"
    lines = source.splitlines()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0]
            has_docstring = isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant)
            start = first.end_lineno if has_docstring else first.lineno - 1
            code = [
                line for line in lines[start : node.end_lineno] if line.strip() and not line.strip().startswith("#")
            ]
            assert len(code) <= 60, f"{path.name}:{node.lineno} {node.name} has {len(code)} lines of code"
