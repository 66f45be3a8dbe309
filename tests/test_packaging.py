"""setup.cfg lists every package folder (a forgotten one is missing from wheels, never from editable installs)."""

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def listed_packages() -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return {line.strip() for line in cfg["options"]["packages"].splitlines() if line.strip()}


def test_every_package_folder_is_listed():
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "pyro_mmvae").rglob("__init__.py")}
    for top in ("models", "guides"):  # installed into the package namespace (package_dir)
        found |= {"pyro_mmvae." + ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / top).rglob("__init__.py")}
    assert found == listed_packages()
