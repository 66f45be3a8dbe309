"""Sphinx configuration for the pyro_mmvae documentation.

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html`` (tests/test_docs.py runs the same build).
The API reference is generated from the docstrings by ``sphinx.ext.autosummary`` walking the package recursively,
so new modules appear without editing these files. The build takes about half a minute, most of it importing
the package (torch, Pyro); sphinx.ext.viewcode and intersphinx are left out to keep it so (intersphinx would also
need network access).
"""

import re
import shutil
from pathlib import Path

import pyro_mmvae

DOCS = Path(__file__).resolve().parent

project = "pyro_mmvae"
author = "pyro_mmvae contributors"
copyright = "pyro_mmvae contributors"
release = pyro_mmvae.__version__
version = release

extensions = [
    "myst_nb",  # Markdown pages (README, ARCHITECTURE) and the tutorial notebooks; brings myst_parser
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",  # Google-style docstrings
    "sphinx.ext.mathjax",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**/.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

# --- API reference -------------------------------------------------------------------------------------------
# Stubs are regenerated on every build. Removing the old ones first matters while modules move: a stub left
# behind for a module that no longer exists would fail the build (it cannot be imported) under -W.
shutil.rmtree(DOCS / "api", ignore_errors=True)
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"show-inheritance": True, "member-order": "bysource"}
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
autodoc_inherit_docstrings = False  # torch.nn.Module's long docstrings would otherwise fill every forward()
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True

# --- Markdown and notebooks ----------------------------------------------------------------------------------
# The notebooks live in tutorials/ at the repository root; Sphinx reads only files under docs/, so each build
# copies them to docs/tutorials/ (git-ignored). A symlink would not do: Sphinx resolves it, and the README's link
# to tutorials/01_write_a_multimodal_vae.ipynb would then point outside the documentation.
shutil.rmtree(DOCS / "tutorials", ignore_errors=True)
shutil.copytree(DOCS.parent / "tutorials", DOCS / "tutorials", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
nb_execution_mode = "off"  # the test suite executes the tutorials (tests/test_tutorials.py); the docs only render
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
suppress_warnings = [
    # Tutorial 3 goes from its title straight to ### sub-sections; a style choice, not a rendering problem.
    "myst.header",
]

# --- HTML ----------------------------------------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"pyro_mmvae {release}"
html_static_path = []


# --- Docstrings ----------------------------------------------------------------------------------------------
# The docstrings are written to read well in help() and use plain-text maths such as |S| (the size of a subset),
# |x − median| or q(·|x_A). In reStructuredText a bar touching a word starts or ends a substitution reference, so
# these would be "undefined substitution" errors. Escape such bars before the docstring is parsed (outside
# literals and roles, and not in line blocks, grid tables or literal blocks), rather than asking every docstring
# to write \|S\|. A bar with spaces on both sides (q(z | x)) is plain text already and is left alone.
_BAR_TOUCHING_TEXT = re.compile(r"(?<!\\)(?:\|(?=\S)|(?<=\S)\|)")
_LITERAL_OR_ROLE = re.compile(r"(``.*?``|:[\w:+-]+:`[^`]*`|`[^`]*`_{0,2})")


def _escape_bars(line: str) -> str:
    parts = _LITERAL_OR_ROLE.split(line)
    # split() with one capture group alternates text, literal, text, ...: escape only the text parts.
    return "".join(_BAR_TOUCHING_TEXT.sub(r"\\|", p) if i % 2 == 0 else p for i, p in enumerate(parts))


def escape_plain_text_bars(app, what, name, obj, options, lines):
    literal_indent = None  # indentation of the paragraph that opened a literal block with "::"
    for i, line in enumerate(lines):
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if literal_indent is not None:
            if not stripped or indent > literal_indent:
                continue
            literal_indent = None
        if stripped.rstrip().endswith("::"):
            literal_indent = indent
        if stripped == "|" or stripped.startswith(("| ", "+-", "+=", ">>>", "..")):
            continue  # line blocks, grid tables, doctests, directives
        lines[i] = _escape_bars(line)


def setup(app):
    app.connect("autodoc-process-docstring", escape_plain_text_bars)
