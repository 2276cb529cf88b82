"""Serve MathJax from the built site instead of a CDN, so the book's math renders offline.

The files come from the ``django-static-mathjax`` wheel (MathJax 3, importable as ``mathjax``;
despite its name it has no Django dependency). ``_config.yml`` sets ``mathjax_path`` to
``mathjax/tex-mml-chtml.js``, which Sphinx resolves under ``_static/``; this extension copies that
bundle and what it loads on demand (TeX extensions, CHTML fonts, menu, accessibility) there.
"""

import shutil
from pathlib import Path

import mathjax

ES5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
BUNDLE = "tex-mml-chtml.js"
ON_DEMAND = ("input", "output", "ui", "a11y", "sre", "adaptors")


def copy_mathjax(app, exc) -> None:
    """After a successful HTML build, put the MathJax bundle under ``_static/mathjax``."""
    if exc is not None or app.builder.format != "html":
        return
    dest = Path(app.outdir, "_static", "mathjax")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(ES5 / BUNDLE, dest / BUNDLE)
    for name in ON_DEMAND:
        shutil.copytree(ES5 / name, dest / name, dirs_exist_ok=True)


def setup(app):
    app.connect("build-finished", copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
