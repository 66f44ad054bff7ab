"""benchmarks/premise_bounds.py and its results: the statistics, a real (tiny) run of the script, and the
stored results agreeing with themselves and with the env they name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from espl.agents.stats import paired
from espl.envs.premise import PremiseEnv
from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "premise_bounds.py"
RESULTS = ROOT / "benchmarks" / "results" / "premise"


@pytest.fixture(scope="module")
def pb():
    return load_script(SCRIPT)


def test_wilson_and_which_rule_an_answer_followed(pb):
    lo, hi = pb.wilson(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))  # textbook values
    assert pb.wilson(0, 20)[0] == pytest.approx(0.0, abs=1e-12) and pb.wilson(0, 20)[1] > 0
    assert pb.followed("24", 6, 4) and pb.followed("24.0", 6, 4)
    assert not pb.followed("18", 6, 4) and not pb.followed(None, 6, 4)
    assert not pb.followed("9" * 40 + "...", 6, 4)  # the checker's mark of a number too long to read


def check_result(data: dict) -> None:
    """A stored result: its counts are its rewards, its paired counts recompute, its rules are the env's."""
    env = PremiseEnv(split="test", **data["env_kwargs"])
    assert data["rule"]["text"] == env.rule_text() and data["wrong_rule"]["text"] == env.wrong_rule_text()
    assert data["rule"]["factor"] == env.rule.factor != data["wrong_rule"]["factor"]
    for name, cond in data["conditions"].items():
        rewards = data["rewards"][name]
        assert len(rewards) == cond["episodes"] == data["tasks"]
        assert cond["correct"] == sum(r >= 1.0 for r in rewards) == cond["reasons"].get("correct", 0)
        assert sum(cond["reasons"].values()) == cond["episodes"]
        assert cond["answers_following"]["correct_rule"] == cond["correct"]  # a correct answer is quantity x factor
        expected = {"base": None, "correct": env.rule_text(), "wrong": env.wrong_rule_text()}[name.split("_")[0]]
        assert cond["system_prompt"] == expected
    for key, stored in data["paired"].items():
        b, a = key.split("_vs_")
        recomputed = paired(dict(enumerate(data["rewards"][a])), dict(enumerate(data["rewards"][b]))).to_dict()
        assert stored == pytest.approx(recomputed, nan_ok=True)


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_stored_results_agree_with_themselves(path):
    data = json.loads(path.read_text())
    if "rewards" not in data:  # the CLI design check: rewards per condition inside each condition
        for cond in data["conditions"].values():
            assert cond["correct"] == sum(r >= 1.0 for r in cond["rewards"]) == cond["reasons"].get("correct", 0)
        return
    check_result(data)


@pytest.mark.slow
def test_a_real_run_writes_a_consistent_result(tmp_path):
    """SmolLM2-135M (the packaged tiny model), 3 tasks, both placements: the script runs end to end."""
    out = tmp_path / "bounds.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--model", "smollm2-135m", "--episodes", "3",
                          "--max-new-tokens", "12", "--placements", "system", "user", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, env={"OMP_NUM_THREADS": "1", **_env()})
    assert run.returncode == 0, run.stderr[-2000:]
    data = json.loads(out.read_text())
    assert set(data["conditions"]) == {"base", "correct", "correct_user", "wrong", "wrong_user"}
    assert data["conditions"]["correct"]["command"].startswith("OMP_NUM_THREADS=1 espl eval --env espl/Premise-v0")
    assert data["conditions"]["correct_user"]["placement"] == "user"
    check_result(data)
    # each condition's command is that condition, episode for episode: the user placement's via the CLI
    import shlex

    from typer.testing import CliRunner

    from espl.cli import app

    cmd = data["conditions"]["correct_user"]["command"]
    assert "--placement user" in cmd
    argv = shlex.split(cmd)
    res = CliRunner().invoke(app, argv[argv.index("espl") + 1:])
    assert res.exit_code == 0, res.output
    cli = json.loads(res.stdout)
    assert cli["placement"] == "user" and cli["episodes"] == 3
    assert cli["mean_reward"] == pytest.approx(sum(data["rewards"]["correct_user"]) / 3)
    assert cli["generated_tokens"] == data["conditions"]["correct_user"]["generated_tokens"]


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
