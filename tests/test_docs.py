"""The documentation builds with warnings as errors, and has its main pages: README quickstart, API, tutorials."""

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("*.ipynb"))

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("sphinx") is None or importlib.util.find_spec("myst_nb") is None,
    reason='building the docs needs sphinx and myst-nb: pip install -e ".[docs]"',
)


@pytest.fixture(scope="module")
def html(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs")
    # Build from a copy of what the docs read: each build regenerates docs/api/ and docs/tutorials/ in its source
    # folder, so a build in the working tree at the same time (a developer's, another test run's) cannot race this one.
    src = out / "src"
    generated = shutil.ignore_patterns("_build", "api", "tutorials", ".ipynb_checkpoints")
    shutil.copytree(ROOT / "docs", src / "docs", ignore=generated)
    shutil.copytree(ROOT / "tutorials", src / "tutorials", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    for name in ("README.md", "ARCHITECTURE.md"):
        shutil.copy2(ROOT / name, src / name)
    # The same command as the README's; a subprocess, so Sphinx's imports and warnings stay out of this process.
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    cmd += ["-d", str(out / "doctrees"), str(src / "docs"), str(out / "html")]
    proc = subprocess.run(cmd, cwd=src, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"sphinx-build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-8000:]}"
    return out / "html"


def test_index_has_the_readme_quickstart(html):
    page = (html / "index.html").read_text()
    assert "Quickstart" in page
    assert "CirclesSquares" in page  # a name from the quickstart code (highlighting splits longer code)


def test_api_reference_documents_beta_elbo(html):
    # Found by its anchor rather than by file name, so the test survives a module moving inside infer/.
    anchor = re.compile(r'id="pyro_mmvae\.infer\.[\w.]*\bBetaELBO"')
    pages = [p for p in (html / "api").glob("*.html") if anchor.search(p.read_text())]
    assert pages, "no API page documents pyro_mmvae.infer...BetaELBO"
    assert "differentiable_loss" in pages[0].read_text()


@pytest.mark.parametrize("notebook", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_is_rendered(html, notebook):
    page = html / "tutorials" / f"{notebook.stem}.html"
    assert page.exists(), f"{notebook.name} was not rendered"
    assert "highlight-ipython3" in page.read_text() or "highlight-python" in page.read_text()


def test_architecture_page(html):
    assert "Architecture" in (html / "architecture.html").read_text()
