"""The wheel: built from the repo layout (rooms at the root), installed into a clean venv, every subpackage
imports from the venv, and no generic top-level name (`envs`, `agents`, ...) is installed."""

from __future__ import annotations

import site
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


def dependency_paths() -> list[str]:
    """The site-packages of the interpreter running the tests: a venv's own (README's set-up), or the system
    Python's (CI). `venv --system-site-packages` would not do: made from a venv's interpreter it sees the
    base interpreter's packages, not the venv's."""
    paths = [*site.getsitepackages(), site.getusersitepackages()] if site.ENABLE_USER_SITE else site.getsitepackages()
    return [p for p in dict.fromkeys(paths) if Path(p).is_dir()]


def test_wheel_installs_into_a_clean_venv_and_imports(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    # the (large) dependencies come from this interpreter's site-packages, listed after the venv's own as plain
    # path lines (their .pth files, e.g. an editable espl install, are not run); espl must come from the wheel
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "espl_test_dependencies.pth").write_text("\n".join(dependency_paths()) + "\n")
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
