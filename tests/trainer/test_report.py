"""`espl report RUN_DIR` (trainer/report.py): the principle diff on cases, the reader on damaged run dirs, a
hostile run dir whose text must stay text, and the page of a real short run (SmolLM2-135M, LoRA, 3 steps)
loaded by headless Chromium from file:// with no console errors and a screenshot kept.

The real run's env is test_train_real's `ParityEnv` (reward 1 for a reply of even length: any model's rollouts differ,
so every step has mixed groups the mutator can learn from) and its mutator is `ScriptedMutator`, a scripted
fake LLM named so: the tiny model rarely writes valid operations, and the lineage needs children."""

from __future__ import annotations

import csv
import json
import re
import subprocess
from html import unescape
from pathlib import Path

import pytest
from typer.testing import CliRunner

from espl.cli import app
from espl.trainer.pool import PromptPool
from espl.trainer.report import ReportError, lineage, load_run, principle_diff, render_report, write_report
from tests.conftest import require
from tests.leaderboard.chromium import FLAGS, chromium, screenshot
from tests.trainer.test_train_real import PARITY_ID

runner = CliRunner()


# ---- the diff of a child from its parent -----------------------------------------------------------------

DIFF_CASES = {
    "unchanged": (["Keep replies short.", "Check the units."], ["Keep replies short.", "Check the units."],
                  [("kept", 0, (0,)), ("kept", 1, (1,))]),
    "root gets two": ([], ["Keep replies short.", "Check the units."], [("added", 0, ()), ("added", 1, ())]),
    "moved, case and spacing": (["Keep replies short.", "Check the units."], ["check  the UNITS.", "Keep replies short."],
                                [("kept", 0, (1,)), ("kept", 1, (0,))]),
    "modified": (["Check the units of every quantity before answering."],
                 ["Check the units and the sign of every quantity before answering."], [("modified", 0, (0,))]),
    "merged": (["Check the units of every quantity.", "Verify the sign of each result."],
               ["Check the units of every quantity and verify the sign of each result."], [("merged", 0, (0, 1))]),
    "removed": (["Guess when unsure about apples.", "Keep replies short."], ["Keep replies short."],
                [("kept", 0, (1,)), ("removed", None, (0,))]),
    "rewritten beyond recognition": (["Check the units."], ["Write the final answer on its own line."],
                                     [("added", 0, ()), ("removed", None, (0,))]),
    "all at once": (["Read the problem twice before starting.", "Check units of every quantity.",
                     "Verify signs of intermediate results.", "Guess when unsure."],
                    ["Read the problem twice before starting any calculation.", "Name the unknown first.",
                     "Check units of every quantity and verify signs of intermediate results."],
                    [("modified", 0, (0,)), ("added", 1, ()), ("merged", 2, (1, 2)), ("removed", None, (3,))]),
}


@pytest.mark.parametrize("case", list(DIFF_CASES))
def test_principle_diff(case):
    parent, child, expected = DIFF_CASES[case]
    changes = principle_diff(parent, child)
    assert [(c.kind, c.child, c.sources) for c in changes] == expected
    # every child principle appears once, in order, then the removed parent ones with their text
    assert [c.text for c in changes if c.kind != "removed"] == child
    assert [c.text for c in changes if c.kind == "removed"] == [parent[c.sources[0]] for c in changes if c.kind == "removed"]


def test_a_new_principle_takes_the_old_one_it_covers_best():
    # both old principles overlap the first new one a little, but each is mostly kept by a different new one
    changes = principle_diff(["Check the units.", "Verify the sign."],
                             ["Check the units and the sign.", "Verify the sign twice."])
    assert [(c.kind, c.sources) for c in changes] == [("modified", (0,)), ("modified", (1,))]


# ---- reading run dirs -------------------------------------------------------------------------------------


def _pool(*children: tuple[list[str], int]) -> dict:
    """A pool.json written by the real PromptPool: the empty root and mutation children (principles, parent)."""
    pool = PromptPool(10)
    pool.add([], 25.0, 25 / 3).scores.append((0, 0.25))
    for i, (principles, parent) in enumerate(children):
        pool.add(principles, 25.0, 8.4, [parent], "mutation", i)
    return pool.to_dict()


def _write_run(path: Path, principles: list[str], reply: str = "ok", message: str = "hello") -> Path:
    """A small run dir in the trainer's file formats (one step, one child)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.toml").write_text('mode = "espl"\nmodel = "smollm2-135m"\nenv = "espl/Math-v0"\nseed = 1\n')
    (path / "pool.json").write_text(json.dumps(_pool((principles, 0))))
    cols = ["step", "mean_reward", "pool_size", "best_id", "best_mu", "best_sigma", "selected", "prompt_scores",
            "skip_ratio", "loss", "loss_tokens", "mutation", "mutation_rejected_ops", "child_id", "crossover",
            "test_reward", "time_rollout", "time_update", "time_mutation", "time_total"]
    with open(path / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerow([0, 0.25, 2, 0, 25, 8.3, "0;0", "0.25;0.25", 0.5, 0.1, 10, "ok", 1, 1, "off", "nan", 1, 1, 1, 3])
    mutation = {"step": 0, "parent": 0, "reason": "ok", "rejected": {"duplicate": 1}, "constrained": False,
                "principles": principles, "calls": [{"prompt": "critique this", "reply": reply}]}
    (path / "mutations.jsonl").write_text(json.dumps(mutation) + "\n")
    sample = {"step": 0, "prompt_id": 0, "problem": 7, "reward": 0.0, "reason": "wrong_answer",
              "messages": [{"role": "user", "content": message}, {"role": "assistant", "content": reply}]}
    (path / "samples.jsonl").write_text(json.dumps(sample) + "\n")
    return path


def test_reader_tolerates_a_cut_off_line_and_names_bad_ones(tmp_path):
    run = _write_run(tmp_path / "run", ["Keep replies short."])
    good = (run / "mutations.jsonl").read_text()
    bad_step = json.dumps({"step": "two", "parent": 0, "reason": "ok", "rejected": {}})
    # a malformed middle line, then a line cut off by a kill (no final newline)
    (run / "mutations.jsonl").write_text(good + "{not json}\n" + bad_step + "\n" + good[: len(good) // 2])
    loaded = load_run(run)
    assert [m.step for m in loaded.mutations] == [0]
    assert loaded.mutations[0].rejected == (("duplicate", 1),) and loaded.mutations[0].calls[0].reply == "ok"
    assert "mutations.jsonl: line 2 is not valid JSON; skipped" in loaded.notes
    assert "mutations.jsonl: line 3 skipped (field 'step' is not an integer)" in loaded.notes
    assert any(n.startswith("mutations.jsonl: line 4 is cut off") for n in loaded.notes)
    assert [p.id for p in loaded.prompts] == [0, 1] and loaded.prompts[1].parents == (0,)
    assert loaded.steps[0].selected == (0, 0) and loaded.steps_done == 1 and loaded.eval_source == ""
    html = render_report(loaded)
    assert "line 4 is cut off" in html  # the page says what it skipped


def test_missing_files_are_notes_and_a_missing_pool_is_one_clear_error(tmp_path):
    run = _write_run(tmp_path / "run", ["Keep replies short."])
    for name in ("samples.jsonl", "mutations.jsonl", "metrics.csv", "config.toml"):
        (run / name).unlink()
    loaded = load_run(run)
    assert len(loaded.notes) == 4 and loaded.steps_done == 1  # from the pool's score history
    assert "Lineage" in render_report(loaded)
    (run / "config.toml").write_text('mode = "rl"\n')  # mode rl writes no mutations.jsonl: not a gap
    assert not any("mutations.jsonl" in n for n in load_run(run).notes)

    with pytest.raises(ReportError, match="does not exist"):
        load_run(tmp_path / "nowhere")
    with pytest.raises(ReportError, match="is a file"):
        load_run(run / "pool.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReportError, match="not a RUN_DIR written by `espl train`"):
        load_run(empty)
    (empty / "config.toml").write_text("seed = 1\n")
    with pytest.raises(ReportError, match="has not finished a step yet"):
        load_run(empty)
    (run / "pool.json").write_text('{"prompts": [{"id": 0, "princ')  # truncated
    with pytest.raises(ReportError, match=r"pool.json is not valid JSON"):
        load_run(run)
    # the checkpoint's copy of the pool stands in, and the page says so
    (run / "checkpoint").mkdir()
    (run / "checkpoint" / "state.json").write_text(json.dumps({"step": 1, "pool": _pool((["From the checkpoint."], 0))}))
    loaded = load_run(run)
    assert loaded.prompts[1].principles == ("From the checkpoint.",)
    assert any("pool of checkpoint/state.json" in n for n in loaded.notes)
    (run / "pool.json").write_text(json.dumps({"prompts": [{"id": "x"}]}))
    (run / "checkpoint" / "state.json").unlink()
    with pytest.raises(ReportError, match=r"a prompt record is malformed \(field 'id' is not an integer\)"):
        load_run(run)

    res = runner.invoke(app, ["report", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_evals_jsonl_gives_the_held_out_curves(tmp_path):
    run = _write_run(tmp_path / "run", ["Keep replies short."])
    lines = [{"step": 0, "prompt": kind, "prompt_id": pid, "principles": [], "mean": mean, "ci95": 0.1,
              "pass_at_k": {"1": mean, "2": min(1.0, mean * 1.5)}, "n": 8}
             for kind, pid, mean in (("newest", 1, 0.5), ("best", 1, 0.5), ("none", None, 0.25))]
    lines.append({**lines[0], "mean": None})  # nothing scored: drawn as no point, not a crash
    (run / "evals.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    loaded = load_run(run)
    assert loaded.eval_source == "evals.jsonl" and [e.kind for e in loaded.evals] == ["newest", "best", "none", "newest"]
    html = render_report(loaded)
    assert "held-out, no prompt" in html and "held-out, newest prompt" in html
    assert re.search(r"<th class=\"num\">pass@2</th>", html)
    assert "after step 1: held-out, no prompt 0.250" in html


def test_crossover_child_names_where_its_additions_came_from(tmp_path):
    run = _write_run(tmp_path / "run", ["Check the units of every quantity."])
    pool = PromptPool.from_dict(json.loads((run / "pool.json").read_text()))
    b = pool.add(["Verify the sign of each result before answering."], 24.0, 8.0, [0], "mutation", 0)
    a = pool.get(1)
    pool.add([a.principles[0], "Verify the sign of every result before answering.", "Write the answer last."],
             25.0, 6.0, [a.id, b.id], "crossover", 0)
    (run / "pool.json").write_text(json.dumps(pool.to_dict()))
    node = next(n for n in lineage(load_run(run)) if n.prompt.op == "crossover")
    assert node.parent is not None and node.parent.id == a.id and node.depth == 2
    assert [c.kind for c in node.changes] == ["kept", "added", "added"]
    assert node.origins == {1: (b.id, 0)}  # the third is new to both parents
    html = render_report(load_run(run))
    assert f"learning from #{b.id}" in html and f"from #{b.id} G0</span>" in html


def test_a_long_chain_and_a_cycle_render_flat(tmp_path):
    """A 600-step run whose lineage is one chain (no recursion limit, indentation capped), a parent cycle
    from a hand-edited pool.json, and the mutator calls of the latest 20 steps only."""
    run = _write_run(tmp_path / "run", ["Rule 0 keeps the reply short."])
    pool = PromptPool.from_dict(json.loads((run / "pool.json").read_text()))
    for i in range(1, 600):
        pool.add([f"Rule {i} keeps the reply short."], 25.0, 8.0, [pool.newest.id], "mutation", i)
    data = pool.to_dict()
    data["prompts"] += [dict(data["prompts"][-1], id=900, parents=[901]), dict(data["prompts"][-1], id=901, parents=[900])]
    (run / "pool.json").write_text(json.dumps(data))
    line = json.loads((run / "mutations.jsonl").read_text())
    (run / "mutations.jsonl").write_text("".join(json.dumps(dict(line, step=i)) + "\n" for i in range(600)))
    loaded = load_run(run)
    tree = lineage(loaded)
    assert [n.prompt.id for n in tree] == list(range(601)) + [900, 901] and tree[600].depth == 600
    assert (tree[-2].depth, tree[-1].depth) == (0, 1)  # the cycle: shown, once each
    assert [c.kind for c in tree[600].changes] == ["modified"]
    html = render_report(loaded)
    assert html.count("margin-left: 352px") == 600 - 15  # depth 16 and deeper share one indentation
    assert html.count("form a cycle in pool.json") == 1
    assert html.count("<summary>1 calls</summary>") == 20 and html.count("1 calls, in mutations.jsonl") == 580


# ---- hostile text stays text ------------------------------------------------------------------------------

EVIL = '<script>alert(1)</script><script>document.title="pwned"</script>'
EVIL_IMG = '</pre><img src=x onerror="document.title=\'pwned\'">'


def test_hostile_run_dir_is_escaped(tmp_path):
    run = _write_run(tmp_path / "hostile", [f"Principle {EVIL} and more."], reply=f"{EVIL_IMG} </script>",
                     message=EVIL_IMG)
    html = render_report(load_run(run))
    body = html.split("<body>", 1)[1]
    assert "<script>alert(1)" not in body and "<img" not in body and "onerror=\"" not in body
    assert body.count("<script>") == 1  # ours only
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    # the policy allows only our script, by hash, whatever slipped through
    assert re.search(r"script-src 'sha256-[A-Za-z0-9+/=]+';", html) and "script-src 'unsafe-inline'" not in html

    require(chromium() is not None, "Chromium")
    dom, console = _load(write_report(run, tmp_path / "hostile.html")[0], tmp_path / "profile")
    assert "<title>E-SPL run report: hostile</title>" in dom  # no injected script ran
    assert 'data-rendered="true"' in dom and console == []
    shown = [unescape(p) for p in re.findall(r"<li>(Principle .*?)</li>", dom)]
    assert f"Principle {EVIL} and more." in shown


def test_non_finite_numbers_draw_no_broken_chart(tmp_path):
    run = _write_run(tmp_path / "run", ["Keep replies short."])
    data = json.loads((run / "pool.json").read_text())
    data["prompts"][1].update(mu=float("nan"), sigma=float("inf"), rating_history=[[0, float("nan"), 1.0]],
                              scores=[[0, float("inf")]])
    (run / "pool.json").write_text(json.dumps(data))  # Python's json writes NaN and Infinity
    metrics = (run / "metrics.csv").read_text().replace("\n0,0.25,", "\n0,inf,")
    (run / "metrics.csv").write_text(metrics)
    html = render_report(load_run(run))
    svg = "".join(re.findall(r"<svg.*?</svg>", html, re.S))
    assert svg and not re.search(r"(?i)nan|inf", svg)
    assert "#1" in html.split('id="prompt-table"', 1)[1]  # still listed, with its numbers as they are


# ---- a real short run --------------------------------------------------------------------------------------

_LABELLED = re.compile(r"^\[([GC]\d+)\]\. (.*)$", re.M)


def scripted_llm(prompt: str) -> str:
    """A scripted fake LLM: the root gets two principles; in the revision plan, a prompt with two or more has its
    first two merged, a prompt with one has it modified (the real mutator parses and validates every reply)."""
    if "extract generalizable principles" in prompt:
        ids = dict(_LABELLED.findall(prompt.rsplit("<principles>", 1)[1]))
        if ids:  # a suggestion, so that the revision call runs
            return json.dumps([{"operation": "modify", "modified_from": "G0", "principle": ids["G0"]}])
        return json.dumps([{"operation": "add", "principle": "Keep every reply short so its length stays even."},
                           {"operation": "add", "principle": "Count the characters of a reply before sending it."}])
    if "final revision plan" in prompt:
        block = prompt.split("<existing_principles>", 1)[1].split("</existing_principles>", 1)[0]
        ids = dict(_LABELLED.findall(block))
        gs = [i for i in ids if i.startswith("G")]
        if len(gs) >= 2:
            return json.dumps([{"operation": "merge", "merged_from": gs[:2],
                                "principle": f"{ids[gs[0]].rstrip('.')}, and {ids[gs[1]][0].lower()}{ids[gs[1]][1:]}"}])
        if gs:
            return json.dumps([{"operation": "modify", "modified_from": gs[0],
                                "principle": ids[gs[0]].rstrip(".") + " in plain words."}])
        return "[]"
    return "1. answered"


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """3 steps of E-SPL with SmolLM2-135M (B=2 problems, M=2 prompts, N=4 rollouts, 8 new tokens) and the
    scripted mutator; held-out evaluation after every step on 4 test tasks."""
    from espl.trainer.espl import TrainConfig, Trainer
    from espl.trainer.mutator import ScriptedMutator

    cfg = TrainConfig.from_dict({
        "env": PARITY_ID, "data.batch_problems": 2, "selection.prompts_per_step": 2, "rollout.rollouts_per_pair": 4,
        "rollout.max_new_tokens": 8, "data.train_problems": 16, "optimizer.learning_rate": 1e-3, "seed": 5,
        "evaluation.every": 1, "evaluation.problems": 4})
    out = tmp_path_factory.mktemp("report") / "run"
    Trainer(cfg, out, mutator=ScriptedMutator(scripted_llm)).train(3)
    return out


def _diff_kinds(changes) -> list[str]:
    return [c.kind for c in changes]


@pytest.mark.slow
def test_report_of_a_real_run(real_run, tmp_path):
    res = runner.invoke(app, ["report", str(real_run), "--out", str(tmp_path / "page.html"), "--samples", "4"])
    assert res.exit_code == 0, res.output
    html = (tmp_path / "page.html").read_text()
    run = load_run(real_run)
    assert run.notes == () and run.steps_done == 3 and len(run.mutations) == 3
    pool = json.loads((real_run / "pool.json").read_text())
    prompts = {p["id"]: p for p in pool["prompts"] + pool["evicted"]}
    children = [p for p in prompts.values() if p["parents"]]
    assert children, "the scripted mutator made no child"

    # the reward curve: one marker per step with metrics.csv's value
    with open(real_run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    drawn = re.findall(r"<title>step (\d+): train mean reward ([0-9.]+)</title>", html)
    assert drawn == [(str(int(r["step"]) + 1), f"{float(r['mean_reward']):.3f}") for r in rows]
    # held-out curves from evals.jsonl: one point per step and prompt kind
    evals = [json.loads(line) for line in (real_run / "evals.jsonl").read_text().splitlines()]
    assert run.eval_source == "evals.jsonl" and len(run.evals) == len(evals) >= 3
    for e in evals:
        label = "no prompt" if e["prompt"] == "none" else f"{e['prompt']} prompt"
        assert f"after step {e['step'] + 1}: held-out, {label} {e['mean']:.3f}" in html
    # each prompt's rating: a marker at each recorded rating (birth, then every match), the last its final one
    for pid, p in prompts.items():
        drawn = re.findall(rf"<title>#{pid} after step (\d+): μ ([0-9.]+) ± σ ([0-9.]+)</title>", html)
        assert drawn == [(str(s + 1), f"{m:.2f}", f"{g:.2f}") for s, m, g in p["rating_history"]], pid
        assert drawn[-1][1:] == (f"{p['mu']:.2f}", f"{p['sigma']:.2f}")
    # the lineage: one node per prompt; each child's diff is principle_diff against its first parent
    assert sorted(int(i) for i in re.findall(r'<div class="node" data-prompt="(\d+)"', html)) == sorted(prompts)
    for child in children:
        node = html.split(f'<div class="node" data-prompt="{child["id"]}"', 1)[1].split("</ul>", 1)[0]
        kinds = re.findall(r'<(?:li|div) class="c-(\w+)">', node)  # the kept ones folded, after the changes
        expected = _diff_kinds(principle_diff(prompts[child["parents"][0]]["principles"], child["principles"]))
        assert kinds == [k for k in expected if k != "kept"] + [k for k in expected if k == "kept"]
        assert f"change from #{child['parents'][0]}" in node
    assert "c-added" in html  # the root's first child adds its principles
    # mutation outcomes: one row per step, the reason of mutations.jsonl
    table = html.split('id="mutation-table"', 1)[1].split("</table>", 1)[0]
    outcomes = re.findall(r'<td class="(?:ok|off|bad)">(\w+)', table)
    assert outcomes == [json.loads(line)["reason"] for line in (real_run / "mutations.jsonl").read_text().splitlines()]
    skips = re.findall(r'<tr><td class="num">\d+</td>\s*<td class="num">[0-9.]+</td>\s*<td class="num">([0-9.]+)</td>', table)
    assert skips == [f"{float(r['skip_ratio']):.2f}" for r in rows]  # the weights' side of each step
    # score histories: every recorded score is listed
    prompt_table = html.split('id="prompt-table"', 1)[1].split("</table>", 1)[0]
    assert prompt_table.count('class="tag">') == sum(len(p["scores"]) for p in prompts.values())
    # samples: 4 of samples.jsonl, every message
    assert html.count('<div class="sample"') == 4

    require(chromium() is not None, "Chromium")
    dom, console = _load(tmp_path / "page.html", tmp_path / "profile")
    assert 'data-rendered="true"' in dom and console == [], console
    assert dom.count('<g class="series"') >= 1 + len(prompts)
    shot = screenshot((tmp_path / "page.html").as_uri(), tmp_path / "profile", "report.png", size="1280,2200")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 30_000


def _load(page: Path, profile: Path) -> tuple[str, list[str]]:
    """The DOM after the page's script ran, and every console message (errors, CSP refusals, logs)."""
    browser = chromium()
    assert browser is not None
    out = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True)
    return out.stdout, [line for line in out.stderr.splitlines() if ":CONSOLE" in line]

