"""MkDocs hook: serve MathJax from the installed `django-static-mathjax` package, not from a CDN.

The docs extra (`pip install -e ".[docs]"`) installs MathJax 3 as a Python package
(`django-static-mathjax`, importable as `mathjax`; no Django needed). This hook copies its
self-contained SVG build (every TeX extension inside, no font files to fetch) and its
licence into the site, so the formulas render with no network access.
"""

import importlib.util
import pathlib

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

# The bundle with every TeX extension and SVG output: one file, nothing loaded later.
MATHJAX_BUNDLE = "es5/tex-svg-full.js"
SITE_FOLDER = "javascripts/mathjax"


def _mathjax_folder() -> pathlib.Path:
    spec = importlib.util.find_spec("mathjax")
    folders = [] if spec is None or spec.submodule_search_locations is None else list(spec.submodule_search_locations)
    for folder in folders:
        root = pathlib.Path(folder) / "static" / "mathjax"
        if (root / MATHJAX_BUNDLE).is_file():
            return root
    raise PluginError(
        "MathJax is not installed: the docs render formulas with the `django-static-mathjax` package. "
        'Install the docs extra: pip install -e ".[docs]".'
    )


def on_files(files: Files, config) -> Files:
    root = _mathjax_folder()
    for source, name in ((MATHJAX_BUNDLE, "tex-svg-full.js"), ("LICENSE", "LICENSE")):
        files.append(File.generated(config, f"{SITE_FOLDER}/{name}", abs_src_path=str(root / source)))
    return files
