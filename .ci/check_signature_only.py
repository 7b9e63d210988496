"""Check that a commit changed only annotations, docstrings and typing imports of the package.

Compares each changed module's syntax tree before and after with annotations, docstrings
and `__future__` / `typing` / `collections.abc` / `numpy.typing` imports removed, and
prints the modules whose code differs (to be reviewed by hand: a new import used only in
annotations, for example). Used to review the "docs sweep" commit:

    python .ci/check_signature_only.py HEAD~1 HEAD
"""

import ast
import subprocess
import sys

TYPING_MODULES = ("__future__", "typing", "collections.abc", "numpy.typing")


def _is_docstring(statement):
    return (
        isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )  # fmt: skip


class _Strip(ast.NodeTransformer):
    def visit_arg(self, node):
        node.annotation = None
        return node

    def _drop_docstring(self, node):
        if node.body and _is_docstring(node.body[0]):
            node.body = node.body[1:] or [ast.Pass()]
        self.generic_visit(node)
        return node

    def visit_FunctionDef(self, node):
        node.returns = None
        return self._drop_docstring(node)

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_ClassDef = _drop_docstring

    def visit_ImportFrom(self, node):
        return None if node.module in TYPING_MODULES else node


def code_of(source):
    tree = ast.parse(source)
    if tree.body and _is_docstring(tree.body[0]):
        tree.body = tree.body[1:]
    return ast.dump(_Strip().visit(tree))


def main(before, after):
    changed = subprocess.run(
        ["git", "diff", "--name-only", before, after, "--", "deel_lip_ext"], capture_output=True, text=True, check=True
    ).stdout.split()
    differ = []
    for path in changed:
        if not path.endswith(".py"):
            continue
        old = subprocess.run(["git", "show", f"{before}:{path}"], capture_output=True, text=True).stdout
        new = subprocess.run(["git", "show", f"{after}:{path}"], capture_output=True, text=True).stdout
        if code_of(old) != code_of(new):
            differ.append(path)
    print(f"{len(changed)} modules changed; code differs beyond annotations/docstrings in: {differ or 'none'}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(*(sys.argv[1:3] if len(sys.argv) >= 3 else ("HEAD~1", "HEAD"))))
