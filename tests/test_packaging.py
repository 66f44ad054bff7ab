"""The wheel: built from the repo layout (rooms at the root), installed into a clean venv, every subpackage
imports from the venv, and no generic top-level name (`envs`, `agents`, ...) is installed."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ["espl", "espl.cli", "espl.envs", "espl.agents", "espl.trainer", "espl.sandboxes", "espl.leaderboard"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)],
        check=True, capture_output=True,
    )
    (whl,) = out.glob("espl_gym-*.whl")
    return whl


def test_wheel_has_only_the_espl_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.startswith("espl_gym-")}
    assert top == {"espl"}, top
    for pkg in SUBPACKAGES:
        assert pkg.replace(".", "/") + "/__init__.py" in names


def test_wheel_installs_into_a_clean_venv_and_imports(wheel, tmp_path):
    venv = tmp_path / "venv"
    # system site-packages provide the (large) dependencies; espl itself must come from the wheel
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)], check=True, capture_output=True)
    code = (
        "import importlib, sys\n"
        f"for name in {SUBPACKAGES!r}:\n"
        "    mod = importlib.import_module(name)\n"
        f"    assert mod.__file__.startswith({str(venv)!r}), (name, mod.__file__)\n"
        "import espl, gymnasium as gym\n"
        "assert 'espl/Math-v0' in gym.registry\n"
        "print('ok')\n"
    )
    res = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
    res = subprocess.run([str(venv / "bin" / "espl"), "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.startswith("espl-gym "), res.stderr
