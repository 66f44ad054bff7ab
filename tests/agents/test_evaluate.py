"""evaluate() and `espl eval` with the real packaged SmolLM2 (and a real llama.cpp server)."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from espl.agents.evaluate import evaluate, mean_ci95, pass_at_k
from espl.agents.openai_policy import OpenAIPolicy
from espl.cli import app
from espl.types import SamplingParams
from tests.agents.test_rollout import CountdownEnv
from tests.conftest import closed_port_url


def test_pass_at_k_and_ci():
    assert pass_at_k(4, 0, 1) == 0.0 and pass_at_k(4, 4, 2) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)
    mean, half = mean_ci95([0.0, 1.0, 1.0, 0.0])
    assert mean == 0.5 and half == pytest.approx(1.959964 * math.sqrt((1 / 3) / 4), rel=1e-5)
    with pytest.raises(ValueError):
        pass_at_k(2, 3, 1)


def test_evaluate_summarises_samples_per_task(smol_policy):
    r = evaluate(CountdownEnv, smol_policy, episodes=3, samples=2, split=None,
                 params=SamplingParams(temperature=1.0, max_new_tokens=6, seed=1))
    assert r.episodes == r.requested == 6 and r.tasks == 3 and r.samples == 2
    assert set(r.pass_at_k) == {1, 2} and r.pass_at_k[2] >= r.pass_at_k[1]
    assert sum(r.reasons.values()) == 6
    assert r.mean_reward == pytest.approx(sum(t.reward for t in r.trajectories) / 6)
    assert r.generated_tokens > 0 and r.tokens_per_s > 0 and r.error is None
    assert [t.seed for t in r.trajectories] == [0, 0, 1, 1, 2, 2]
    # the two samples of a task are different draws
    assert any(a.token_ids != b.token_ids for a, b in zip(r.trajectories[::2], r.trajectories[1::2]))


def test_evaluate_keeps_partial_results_when_the_backend_dies():
    pol = OpenAIPolicy(closed_port_url(), "m", retries=0, timeout_s=2)
    r = evaluate(CountdownEnv, pol, episodes=2, split=None, params=SamplingParams(max_new_tokens=4))
    assert r.episodes == 0 and r.requested == 2 and "policy failed" in r.error


def test_cli_eval_json_and_out(smol_policy, tmp_path):
    res = CliRunner().invoke(app, ["eval", "--env", "espl/Math-v0", "--episodes", "2", "--max-new-tokens", "8",
                                   "--system-prompt", "Be brief.", "--json", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)  # exactly one JSON object on stdout
    assert out["env"] == "espl/Math-v0" and out["model"] == "smollm2-135m" and out["episodes"] == 2
    assert 0.0 <= out["mean_reward"] and out["system_prompt"] == "Be brief." and out["split"] == "test"
    lines = (tmp_path / "trajectories.jsonl").read_text().splitlines()
    assert len(lines) == 2
    t = json.loads(lines[0])
    assert t["system_prompt"] == "Be brief." and t["token_ids"] and t["rendered_prompt"].startswith("<|im_start|>system\nBe brief.")
    assert json.loads((tmp_path / "summary.json").read_text())["episodes"] == 2


def test_cli_eval_placement_user_puts_the_prompt_in_the_user_turn(smol_policy, tmp_path):
    """`--placement user`: the reference's user-turn text (problem first, then the principles), no system turn."""
    from espl.envs.core import USER_PLACEMENT_TEMPLATE

    res = CliRunner().invoke(app, ["eval", "--env", "espl/Math-v0", "--episodes", "1", "--max-new-tokens", "4",
                                   "--system-prompt", "Be brief.", "--placement", "user", "--json", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["placement"] == "user" and out["system_prompt"] == "Be brief."
    t = json.loads((tmp_path / "trajectories.jsonl").read_text().splitlines()[0])
    rendered = t["rendered_prompt"]
    head = USER_PLACEMENT_TEMPLATE.split("{")[0]
    assert head in rendered and "Be brief." in rendered
    assert rendered.index(head) < rendered.index("Be brief.")  # the problem first, then the principles
    assert "<|im_start|>system\nBe brief." not in rendered
    # the default is a system message, and the summary says no placement without a prompt
    res = CliRunner().invoke(app, ["eval", "--env", "espl/Math-v0", "--episodes", "1", "--max-new-tokens", "4", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["placement"] is None


def test_cli_eval_against_a_server_and_prompt_file(llama_server, tmp_path):
    prompt = tmp_path / "p.txt"
    prompt.write_text("Answer with a number.\n")
    res = CliRunner().invoke(app, ["eval", "--env", "espl/Math-v0", "--episodes", "2", "--max-new-tokens", "8",
                                   "--base-url", llama_server, "--model", "smollm2", "-p", f"@{prompt}", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["episodes"] == 2 and out["system_prompt"] == "Answer with a number." and out["generated_tokens"] > 0


def test_cli_eval_bad_input_is_named():
    r = CliRunner().invoke(app, ["eval", "--env", "espl/Mathh-v0", "--episodes", "1"])
    assert r.exit_code == 2 and "Math-v0" in r.output
    r = CliRunner().invoke(app, ["eval", "--env", "espl/Math-v0", "--model", "smol", "--episodes", "1"])
    assert r.exit_code == 2 and "smollm2-135m" in r.output and "qwen2.5-coder-0.5b" in r.output
    r = CliRunner().invoke(app, ["eval", "--episodes", "1"])
    assert r.exit_code == 2 and "--env" in r.output
    r = CliRunner().invoke(app, ["eval", "--env", "espl/Math-v0", "-p", "@/nonexistent/p.txt"])
    assert r.exit_code == 2 and "no such file" in r.output
