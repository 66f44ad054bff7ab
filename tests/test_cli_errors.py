"""Bad input to every espl command: one line naming the field and the fix, exit code 2, no traceback, and no
model loaded (issue 13.4/13.5). Each case is a reproducible report of issue 13; the model loader is replaced
by one that fails the test, so "before any model loads" is checked, not assumed."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from espl.cli import app

runner = CliRunner()


@pytest.fixture
def no_model(monkeypatch):
    import espl.agents.hf as hf

    def boom(self, *a, **k):
        raise AssertionError("a model was loaded before the input was validated")

    monkeypatch.setattr(hf.HFPolicy, "__init__", boom)


def one_error_line(res, *needles: str) -> str:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("args, needles", [
    (["-n", "0"], ["--episodes 0: must be >= 1"]),  # before: ran 32 episodes
    (["-n", "-2"], ["--episodes -2: must be >= 1"]),  # before: a traceback after the model load
    (["--samples", "0"], ["--samples 0"]),
    (["--env-arg", "bogus=1"], ["--env-arg.bogus", "takes no such argument", "max_attempts"]),
    (["--env-arg", "max_atempts=2"], ["did you mean 'max_attempts'"]),
    (["--split", "dev"], ["--split 'dev': must be train or test"]),
    (["--db", "lb.db"], ["--db stores leaderboard suite results", "--out DIR"]),  # before: ran, stored nothing
    (["--continue"], ["--continue needs --out DIR"]),
    # before: typer's boxed "Invalid value" naming the dataclass field, not the flag
    (["--tool-grammar", "bogus"], ["--tool-grammar: must be one of", "call_then_answer", "'bogus'"]),
    (["--top-p", "2"], ["--top-p: must be in (0, 1]"]),
    (["--device", "tpu"], ["--device: must be cpu, cuda"]),
    (["--tool-format", "xml"], ["--tool-format 'xml': must be native or hermes"]),
    (["--backend", "spark"], ["--backend 'spark': must be local or ray"]),
    (["--env-arg", "max_attempts"], ["--env-arg 'max_attempts': expected KEY=VALUE"]),
    (["--system-prompt", "@/no/such/prompt.txt"], ["--system-prompt: no such file"]),
    (["--placement", "assistant", "-p", "x"], ["--placement 'assistant': must be system or user"]),
    (["--placement", "user"], ["--placement user", "give --system-prompt"]),
    # before: tasks 259.. wrapped around to 0.., counted twice in the mean and its interval
    (["-n", "300"], ["--episodes: 300 tasks asked of espl/Math-v0's test split", "259 distinct", "at most 259"]),
])
def test_eval_bad_input(no_model, tmp_path, args, needles):
    res = runner.invoke(app, ["eval", "--env", "espl/Math-v0", *args])
    one_error_line(res, *needles)


def test_eval_env_typo_and_non_utf8_prompt(no_model, tmp_path):
    res = runner.invoke(app, ["eval", "--env", "espl/Mth-v0"])
    one_error_line(res, "--env", "espl/Math-v0")
    bad = tmp_path / "prompt.txt"
    bad.write_bytes("Sé bref.".encode("latin-1"))
    res = runner.invoke(app, ["eval", "--env", "espl/Math-v0", "--system-prompt", f"@{bad}"])
    one_error_line(res, "--system-prompt", "is not UTF-8 text", "iconv")


def test_eval_continue_without_an_interrupted_eval(no_model, tmp_path):
    res = runner.invoke(app, ["eval", "--env", "espl/Math-v0", "--out", str(tmp_path / "d"), "--continue"])
    one_error_line(res, "holds no interrupted evaluation")


def test_prompts_on_a_truncated_pool(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "pool.json").write_text('{"prompts": [{"id": 0, "princ')
    one_error_line(runner.invoke(app, ["prompts", str(run)]), "pool.json is not a readable pool")
    (run / "pool.json").write_bytes(b"\xff\xfe")
    one_error_line(runner.invoke(app, ["prompts", str(run)]), "is not a readable pool")
    (run / "pool.json").write_text(json.dumps({"prompts": []}))
    assert runner.invoke(app, ["prompts", str(run), "--by", "best"]).exit_code == 2


def test_sandbox_run_missing_stdin_file(tmp_path):
    prog = tmp_path / "p.py"
    prog.write_text("print(input())\n")
    res = runner.invoke(app, ["sandbox", "run", str(prog), "--stdin", str(tmp_path / "missing.txt")])
    one_error_line(res, "--stdin: cannot read", "missing.txt")


def test_flags_are_shown_as_flags():
    """Issue 13.9: `espl ... --help` showed `--json <bool>` as if a flag took a value; every flag shows none."""
    import click
    import typer

    def walk(cmd, path):
        yield path, cmd
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, f"{path} {name}")

    shown = []
    for path, cmd in walk(typer.main.get_command(app), "espl"):
        for param in cmd.params:
            if isinstance(param, click.Option) and param.is_flag and param.name != "help" and param.metavar != "":
                shown.append(f"{path} {param.opts[0]}")
    assert not shown, shown
    res = runner.invoke(app, ["leaderboard", "show", "--help"], terminal_width=200)
    assert [line for line in res.output.splitlines() if "--json" in line and "<bool>" in line] == []
