"""`espl eval`: evaluate a model (and a system prompt) on an env, or on a leaderboard suite.

    espl eval --env espl/Math-v0 --model smollm2-135m --episodes 64 --system-prompt @prompt.txt
    espl eval --env espl/Math-v0 --base-url http://127.0.0.1:8080/v1 --model served-name --json
    espl eval --suite smoke --model smollm2-135m          # stored in the leaderboard (see docs/leaderboard.md)
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

err_console = Console(stderr=True)


def read_prompt(value: Optional[str]) -> Optional[str]:
    """`TEXT` as it is, `@FILE` the file's text (trailing newline dropped); None stays None."""
    if value is None:
        return None
    if value.startswith("@"):
        path = Path(value[1:]).expanduser()
        if not path.is_file():
            raise typer.BadParameter(f"no such file {path} (write the prompt text, or @FILE for a file)",
                                     param_hint="--system-prompt")
        return path.read_text(encoding="utf-8").rstrip("\n")
    return value


def parse_env_args(items: List[str]) -> dict:
    """`KEY=VALUE` pairs; VALUE is read as JSON when it parses (numbers, true/false, lists), else a string."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r}: expected KEY=VALUE, e.g. max_attempts=2", param_hint="--env-arg")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def eval_command(
    env: Optional[str] = typer.Option(None, "--env", help="Env id, e.g. espl/Math-v0 (`espl envs list`)."),
    model: str = typer.Option("smollm2-135m", "--model", "-m",
                              help="Alias (smollm2-135m, qwen2.5-coder-0.5b), HF id or path; with --base-url "
                                   "the server's model name."),
    system_prompt: Optional[str] = typer.Option(None, "--system-prompt", "-p", help="TEXT, or @FILE."),
    episodes: Optional[int] = typer.Option(None, "--episodes", "-n", help="Tasks to run (default 32)."),
    samples: int = typer.Option(1, "--samples", "-k", help="Samples per task (pass@k for k <= samples)."),
    seed: int = typer.Option(0, "--seed", help="First task seed; also the sampling seed."),
    split: str = typer.Option("test", "--split", help="Task split: test or train."),
    temperature: float = typer.Option(0.7, "--temperature"),
    top_p: float = typer.Option(0.95, "--top-p"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Token budget per reply."),
    env_arg: List[str] = typer.Option([], "--env-arg", help="Env keyword argument KEY=VALUE (repeatable)."),
    base_url: Optional[str] = typer.Option(None, "--base-url",
                                           help="An OpenAI-compatible server (vLLM, llama.cpp, hosted API)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="Server API key (default $OPENAI_API_KEY)."),
    tool_format: str = typer.Option("native", "--tool-format",
                                    help="With --base-url: native (tools=) or hermes (tools described in the "
                                         "system prompt, for servers that drop tools=)."),
    max_batch: Optional[int] = typer.Option(None, "--max-batch", help="Episodes live at once (default: all)."),
    device: str = typer.Option("cpu", "--device", help="transformers backend: cpu, cuda, ..."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (nothing else on stdout)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write trajectories.jsonl and summary.json here."),
    suite: Optional[str] = typer.Option(None, "--suite", help="A leaderboard suite (name or TOML file)."),
    db: Optional[Path] = typer.Option(None, "--db", help="Leaderboard database (with --suite / --from-run)."),
    from_run: Optional[Path] = typer.Option(None, "--from-run", help="Evaluate a training run's prompts + adapter."),
    name: Optional[str] = typer.Option(None, "--name", help="Agent name on the leaderboard."),
    chunk_size: Optional[int] = typer.Option(None, "--chunk-size", help="Leaderboard: episodes per stored chunk."),
    backend_opt: str = typer.Option("local", "--backend", help="Where episodes run: local | ray (docs/scaling.md)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address",
                                              help="Ray cluster to join (auto, HOST:PORT); default: a private one here."),
    ray_workers: int = typer.Option(2, "--ray-workers", help="Rollout workers on Ray, each with its own policy."),
) -> None:
    """Evaluate a model and system prompt on an env: mean reward ± 95% CI, pass@k, reasons, tokens/s."""
    from espl.types import SamplingParams

    prompt = read_prompt(system_prompt)
    try:
        params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if tool_format not in ("native", "hermes"):
        raise typer.BadParameter("must be native or hermes", param_hint="--tool-format")
    backend = "openai" if base_url else "hf"
    from espl.agents.policy import PolicySpec, build_policy

    try:
        policy_spec = PolicySpec(backend=backend, model=model, device=device, base_url=base_url, api_key=api_key,
                                 tool_format=tool_format)  # type: ignore[arg-type]
    except ValueError as exc:  # names the field: device, base_url, ...
        raise typer.BadParameter(str(exc)) from None

    def make_policy():
        return build_policy(policy_spec)

    if backend_opt not in ("local", "ray"):
        raise typer.BadParameter("must be local or ray", param_hint="--backend")
    ray = None
    if backend_opt == "ray":
        if suite or from_run:
            raise typer.BadParameter("ray runs --env evaluations; leaderboard suites run locally", param_hint="--backend")
        if ray_workers < 1:
            raise typer.BadParameter("must be >= 1", param_hint="--ray-workers")
        from espl.agents.distributed import WorkerPolicy

        recipe = WorkerPolicy(policy_spec)
        ray = (recipe, ray_address, ray_workers, 1 if device.startswith("cuda") and not base_url else 0)

    if suite or from_run:
        if env:
            raise typer.BadParameter("give --env, or --suite/--from-run, not both", param_hint="--env")
        from espl.cli.leaderboard import eval_suite_command

        eval_suite_command(suite=suite, db=db, from_run=from_run, policy_spec=policy_spec, model=model,
                           backend=backend, system_prompt=prompt, params=params, episodes=episodes,
                           as_json=as_json, name=name, chunk_size=chunk_size)
        return
    if not env:
        raise typer.BadParameter("which env? e.g. --env espl/Math-v0 (`espl envs list`), or --suite NAME",
                                 param_hint="--env")
    _eval_env(env, make_policy, model, prompt, episodes or 32, samples, seed, split, params,
              parse_env_args(env_arg), max_batch, as_json, out, ray)


def _eval_env(env, make_policy, model, prompt, episodes, samples, seed, split, params, env_kwargs, max_batch,
              as_json, out, ray=None) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from espl.agents.evaluate import evaluate
    from espl.envs.registration import get_spec

    try:
        get_spec(env)
    except Exception as exc:  # Gymnasium's unregistered-env error with close matches
        err_console.print(f"[red]--env: {exc}[/red]")
        raise typer.Exit(2) from None
    if split not in ("train", "test"):
        raise typer.BadParameter("must be train or test", param_hint="--split")
    rollout_fn, close = None, lambda: None
    try:
        if ray is None:
            policy = make_policy()
        else:  # the workers build the policy; here only the name is checked
            from espl.agents.distributed import RayRollout

            recipe, address, workers, gpus = ray
            if recipe.backend == "hf":
                from espl.agents.models import resolve_model

                resolve_model(model)
            policy = None
            rr = RayRollout(recipe, address=address, num_workers=workers, gpus_per_worker=gpus)
            rollout_fn, close = rr.rollout, rr.close
    except (ValueError, FileNotFoundError) as exc:
        err_console.print(f"[red]--model: {exc}[/red]")
        raise typer.Exit(2) from None
    with Progress(TextColumn(f"{env}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=as_json) as bar:
        task = bar.add_task("episodes", total=episodes * samples)
        try:
            result = evaluate(env, policy, episodes=episodes, params=params, system_prompt=prompt, samples=samples,
                              seed=seed, split=split, env_kwargs=env_kwargs, max_batch=max_batch,
                              progress=lambda done, total: bar.update(task, completed=done), rollout_fn=rollout_fn)
        finally:
            close()
    result.model = model
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "trajectories.jsonl", "w", encoding="utf-8") as f:
            for t in result.trajectories:
                f.write(json.dumps(t.to_dict(), ensure_ascii=False) + "\n")
        (out / "summary.json").write_text(json.dumps(result.to_dict(), indent=2, default=str), encoding="utf-8")
    if as_json:
        d = result.to_dict()
        d = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}
        if out is not None:
            d["out"] = str(out)
        sys.stdout.write(json.dumps(d, default=str) + "\n")
    else:
        _print_summary(result, out)
    if result.error:
        if not as_json:
            err_console.print(f"[red]{result.error}[/red]")
        raise typer.Exit(1)


def _print_summary(r, out) -> None:
    from rich.table import Table

    con = Console()
    table = Table(title=f"{r.model} on {r.env} ({r.split} split)", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("episodes", f"{r.episodes} of {r.requested} ({r.tasks} tasks x {r.samples} samples)")
    table.add_row("mean reward", f"{r.mean_reward:.3f} ± {r.ci95:.3f} (95% CI)")
    table.add_row("success", f"{r.success_rate:.1%}")
    table.add_row("pass@k", "  ".join(f"@{k} {v:.3f}" for k, v in r.pass_at_k.items()))
    table.add_row("reasons", ", ".join(f"{k} {v}" for k, v in r.reasons.items()))
    table.add_row("speed", f"{r.generated_tokens} tokens in {r.seconds:.1f} s = {r.tokens_per_s:.1f} tokens/s")
    table.add_row("system prompt", (r.system_prompt or "(none)")[:200])
    if out is not None:
        table.add_row("trajectories", str(out / "trajectories.jsonl"))
    con.print(table)
