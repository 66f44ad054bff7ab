"""Registration: espl ids on `import espl`, a third-party plugin through the `espl.envs` entry-point group,
Gymnasium's "did you mean" on typos, and the CLI listing/checking them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest

import espl
from espl.envs.registration import ESPL_ENVS, env_ids, get_spec

FIXTURE = Path(__file__).parent / "fixtures" / "acme_envs"


def test_every_espl_env_is_registered_under_the_espl_namespace():
    ids = env_ids()
    for rec in ESPL_ENVS:
        assert rec.id in ids
        assert rec.id.startswith("espl/")
        assert gym.registry[rec.id].entry_point == rec.entry_point


def test_gymnasiums_own_namespaced_envs_are_not_listed():
    assert not [i for i in env_ids() if i.startswith(("phys2d/", "tabular/"))]


def test_unknown_id_suggests_close_matches():
    with pytest.raises(gym.error.Error, match="Did you mean"):
        get_spec("espl/Mth-v0")
    with pytest.raises(gym.error.Error):
        gym.make("espl/Mth-v0")


def test_import_espl_does_not_import_torch_or_transformers():
    code = "import sys, espl; print(','.join(m for m in ('torch', 'transformers', 'reasoning_gym') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    """The acme fixture distribution installed into a private folder (never into the test's environment)."""
    target = tmp_path_factory.mktemp("acme_site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(FIXTURE)],
        check=True, capture_output=True,
    )
    return target


def _run(args: list[str], plugin_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(plugin_path), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)


def test_plugin_env_is_listed(plugin_path):
    res = _run(["-m", "espl", "envs", "list", "--json"], plugin_path)
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    by_id = {r["id"]: r for r in rows}
    assert "acme/Echo-v0" in by_id and "espl/Math-v0" in by_id
    assert by_id["acme/Echo-v0"]["family"] == "toy"


def test_plugin_env_passes_check(plugin_path):
    res = _run(["-m", "espl", "envs", "check", "acme/Echo-v0"], plugin_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "all checks passed" in res.stdout


def test_plugin_env_is_made_by_gymnasium_after_import_espl(plugin_path):
    code = (
        "import espl, gymnasium as gym\n"
        "env = gym.make('acme/Echo-v0')\n"
        "obs, info = env.reset(seed=3, options={'system_prompt': 'be brief'})\n"
        "word = obs[1]['content'].split()[-1]\n"
        "_, r, term, trunc, info = env.step(word)\n"
        "print(r, term, info['reason'])\n"
        # Gymnasium's own "module:id" form works too
        "env2 = gym.make('acme_envs:acme/Echo-v0')\n"
        "print(type(env2.unwrapped).__name__)\n"
    )
    res = _run(["-c", code], plugin_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["1.0", "True", "correct", "EchoEnv"]


def test_check_of_unknown_id_exits_1_with_suggestion():
    res = subprocess.run([sys.executable, "-m", "espl", "envs", "check", "espl/Mth-v0"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1
    assert "Did you mean" in res.stdout


def test_version():
    res = subprocess.run([sys.executable, "-m", "espl", "--version"], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == f"espl-gym {espl.__version__}"
