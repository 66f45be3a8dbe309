"""The README's quickstart runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_quickstart_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python quickstart"
    scope: dict = {}
    exec(compile(blocks[0], "README quickstart", "exec"), scope)
    assert scope["circles"].shape == (4, 1, 32, 32)


def test_readme_opens_with_the_two_commands():
    text = README.read_text()
    first = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1).strip().splitlines()
    assert first == ["pip install -e . && pyro-mmvae train", 'pip install -e ".[test]" && python -m pytest']
