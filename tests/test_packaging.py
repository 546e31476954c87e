"""The package builds with the oldest build backend it declares, and declares exactly what
it imports."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

import jacobian_scopes as js

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# distribution name -> import name, where they differ
IMPORT_NAMES = {"transformer-lens": "transformer_lens"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip()


def test_every_runtime_dependency_is_imported_by_the_package():
    source = "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.py"))
    imported = set(re.findall(r"^\s*(?:from|import) ([A-Za-z_]\w*)", source, flags=re.M))
    # a package whose files are read (CircuitsVis's JavaScript bundle) is used too
    imported |= set(re.findall(r"resources\.files\(\"(\w+)\"\)", source))
    for requirement in PYPROJECT["project"]["dependencies"]:
        dist = _name(requirement)
        module = IMPORT_NAMES.get(dist, dist.replace("-", "_"))
        assert module in imported, f"{dist} is declared but never imported"


def test_the_version_has_one_source():
    assert js.__version__ == PYPROJECT["project"]["version"]
    assert "version" not in PYPROJECT["project"].get("dynamic", [])


@pytest.mark.slow
def test_a_wheel_builds_with_the_oldest_declared_setuptools(tmp_path):
    (floor,) = [r for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools")]
    version = floor.split(">=")[1]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", f"setuptools=={version}.*"], check=True)
    dist = tmp_path / "dist"
    subprocess.run(
        [*pip, "wheel", "--no-build-isolation", "--no-deps", "-w", dist, ROOT],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = dist.glob("jacobian_scopes-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert any(n.endswith("licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in metadata
    assert f"Version: {js.__version__}" in metadata
