"""Every tutorial notebook runs top to bottom at small settings (PYRO_MMVAE_TUTORIAL_SMALL=1)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.common import SHARED_DATA

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "tutorials").glob("*.ipynb"))


def notebook_source(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    # Notebook magics have no meaning in a script.
    lines = [ln for block in code for ln in block.splitlines() if not ln.lstrip().startswith(("%", "!"))]
    return "\n".join(lines) + "\n"


def test_there_are_tutorials():
    assert len(TUTORIALS) >= 1


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path, tmp_path):
    script = tmp_path / f"{path.stem}.py"
    script.write_text(notebook_source(path))
    env = dict(os.environ, PYRO_MMVAE_TUTORIAL_SMALL="1", MPLBACKEND="Agg", PYRO_MMVAE_DATA=str(SHARED_DATA))
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"{path.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
