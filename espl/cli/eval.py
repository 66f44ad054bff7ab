"""`espl eval`: evaluate a model (and a system prompt) on an env, or on a leaderboard suite.

    espl eval --env espl/Math-v0 --model smollm2-135m --episodes 64 --system-prompt @prompt.txt
    espl eval --env espl/Math-v0 --base-url http://127.0.0.1:8080/v1 --model served-name --json
    espl eval --env espl/MATH500-v0 --model qwen2.5-coder-1.5b --llamacpp --threads 1   # its GGUF in llama.cpp
    espl eval --suite smoke --model smollm2-135m          # stored in the leaderboard (see docs/leaderboard.md)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, List, NoReturn, Optional, cast

import typer
from rich.console import Console

if TYPE_CHECKING:
    from espl.agents.policy import Backend, PolicySpec, ToolFormat

err_console = Console(stderr=True)


def fail(message: str) -> NoReturn:
    """Bad input: one line on stderr, exit code 2 (as every espl command)."""
    from rich.markup import escape

    err_console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True, highlight=False)
    raise typer.Exit(2)


_FLAG_OF_FIELD = {"parallel": "--max-batch", "backend": "--llamacpp/--base-url"}


def _flag_error(exc: ValueError) -> str:
    """A dataclass's "field: why" as "--flag: why", the flag the user typed (top_p -> --top-p)."""
    field, sep, why = str(exc).partition(":")
    if not sep or not field.isidentifier():
        return str(exc)
    return f"{_FLAG_OF_FIELD.get(field, '--' + field.replace('_', '-'))}:{why}"


def read_prompt(value: Optional[str]) -> Optional[str]:
    """`TEXT` as it is, `@FILE` the file's text (trailing newline dropped); None stays None."""
    if value is None:
        return None
    if value.startswith("@"):
        path = Path(value[1:]).expanduser()
        if not path.is_file():
            fail(f"--system-prompt: no such file {path} (write the prompt text, or @FILE for a file)")
        try:
            return path.read_bytes().decode("utf-8").rstrip("\n")
        except UnicodeDecodeError as exc:
            fail(f"--system-prompt: {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); convert it, "
                 f"e.g. `iconv -f latin1 -t utf-8 {path} > prompt.txt`")
    return value


def parse_env_args(items: List[str]) -> dict:
    """`KEY=VALUE` pairs; VALUE is read as JSON when it parses (numbers, true/false, lists), else a string."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            fail(f"--env-arg {item!r}: expected KEY=VALUE, e.g. max_attempts=2")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def eval_command(
    env: Optional[str] = typer.Option(None, "--env", help="Env id, e.g. espl/Math-v0 (`espl envs list`)."),
    model: str = typer.Option("smollm2-135m", "--model", "-m",
                              help="Alias (smollm2-135m, qwen2.5-coder-0.5b, qwen2.5-coder-1.5b), HF id or path; "
                                   "with --base-url the server's model name."),
    system_prompt: Optional[str] = typer.Option(None, "--system-prompt", "-p", help="TEXT, or @FILE."),
    placement: str = typer.Option("system", "--placement",
                                  help="Where --system-prompt goes: system (a system message) or user (the first "
                                       "user turn, in the E-SPL reference's text: selection.placement=user)."),
    episodes: Optional[int] = typer.Option(None, "--episodes", "-n", help="Tasks to run (default 32)."),
    samples: int = typer.Option(1, "--samples", "-k", help="Samples per task (pass@k for k <= samples)."),
    seed: int = typer.Option(0, "--seed", help="First task seed; also the sampling seed."),
    split: str = typer.Option("test", "--split", help="Task split: test or train."),
    temperature: float = typer.Option(0.7, "--temperature"),
    top_p: float = typer.Option(0.95, "--top-p"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Token budget per reply."),
    tool_grammar: str = typer.Option("off", "--tool-grammar",
                                     help="off | required | auto | answer | call_then_answer: decode tool calls "
                                          "under a grammar of the env's tools (docs/tools.md)."),
    env_arg: List[str] = typer.Option([], "--env-arg", help="Env keyword argument KEY=VALUE (repeatable)."),
    base_url: Optional[str] = typer.Option(None, "--base-url",
                                           help="An OpenAI-compatible server (vLLM, llama.cpp, hosted API)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="Server API key (default $OPENAI_API_KEY)."),
    tool_format: str = typer.Option("native", "--tool-format",
                                    help="With --base-url: native (tools=) or hermes (tools described in the "
                                         "system prompt, for servers that drop tools=)."),
    max_batch: Optional[int] = typer.Option(None, "--max-batch", help="Episodes live at once (default: all)."),
    device: str = typer.Option("cpu", "--device", help="transformers backend: cpu, cuda, ..."),
    llamacpp: bool = typer.Option(False, "--llamacpp", metavar="",
                                  help="Serve --model's GGUF (an alias or .gguf path) in an in-process llama.cpp "
                                       "server instead of transformers (3-8x faster on CPU; docs/benchmarks.md)."),
    threads: int = typer.Option(1, "--threads", help="--llamacpp: the server's CPU threads."),
    as_json: bool = typer.Option(False, "--json", metavar="", help="Print one JSON object (nothing else on stdout)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write trajectories.jsonl (as episodes finish) and summary.json here."),
    resume_out: bool = typer.Option(False, "--continue", metavar="", help="Continue the interrupted evaluation in --out DIR "
                                                              "(same options; finished episodes are kept)."),
    suite: Optional[str] = typer.Option(None, "--suite", help="A leaderboard suite (name or TOML file)."),
    db: Optional[Path] = typer.Option(None, "--db", help="Leaderboard database (with --suite / --from-run)."),
    from_run: Optional[Path] = typer.Option(None, "--from-run", help="Evaluate a training run's prompts + adapter."),
    name: Optional[str] = typer.Option(None, "--name", help="Agent name on the leaderboard."),
    chunk_size: Optional[int] = typer.Option(None, "--chunk-size", help="Leaderboard: episodes per stored chunk."),
    backend_opt: str = typer.Option("local", "--backend", help="Where episodes run: local | ray (docs/scaling.md)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address",
                                              help="Ray cluster to join (auto, HOST:PORT); default: a private one here."),
    ray_workers: int = typer.Option(2, "--ray-workers", help="Rollout workers on Ray, each with its own policy."),
    verbose: bool = typer.Option(False, "--verbose", "-v", metavar="", help="Show library progress bars and warnings too."),
) -> None:
    """Evaluate a model and system prompt on an env: mean reward ± 95% CI, pass@k, reasons, tokens/s."""
    from espl.cli.output import quiet_libraries

    quiet_libraries(verbose)
    for flag, value in (("--episodes", episodes), ("--samples", samples), ("--max-new-tokens", max_new_tokens),
                        ("--max-batch", max_batch), ("--ray-workers", ray_workers), ("--chunk-size", chunk_size)):
        if value is not None and value < 1:
            fail(f"{flag} {value}: must be >= 1")
    if seed < 0:
        fail(f"--seed {seed}: must be >= 0 (task seeds are seed .. seed+episodes-1)")
    if db is not None and env and not (suite or from_run):
        fail("--db stores leaderboard suite results (--suite / --from-run); an --env evaluation is kept with "
             "--out DIR (trajectories.jsonl, summary.json), or run it as a suite: --suite FILE.toml --db PATH")
    if resume_out and out is None:
        fail("--continue needs --out DIR (the directory of the interrupted evaluation)")
    if placement not in ("system", "user"):
        fail(f"--placement {placement!r}: must be system or user")
    if placement != "system" and system_prompt is None:
        fail("--placement user places --system-prompt in the user turn: give --system-prompt TEXT (or @FILE)")
    from espl.types import SamplingParams

    prompt = read_prompt(system_prompt)
    try:
        params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed,
                                tool_grammar=tool_grammar)
    except ValueError as exc:  # names the field: "tool_grammar: must be one of ..."
        fail(_flag_error(exc))
    policy_spec = _policy_spec(model, base_url, llamacpp, device, api_key, tool_format, threads, max_batch)
    if backend_opt not in ("local", "ray"):
        fail(f"--backend {backend_opt!r}: must be local or ray")
    if backend_opt == "ray" and (suite or from_run):
        fail("--backend ray runs --env evaluations; leaderboard suites (--suite / --from-run) run locally: drop --backend")

    if suite or from_run:
        if placement != "system":
            fail("--placement is for --env evaluations (a suite or run places its prompts itself); drop it")
        if env:
            fail("--env: give --env, or --suite/--from-run, not both")
        from espl.cli.leaderboard import eval_suite_command

        eval_suite_command(suite=suite, db=db, from_run=from_run, policy_spec=policy_spec, model=model,
                           backend=policy_spec.backend, system_prompt=prompt, params=params, episodes=episodes,
                           as_json=as_json, name=name, chunk_size=chunk_size)
        return
    if not env:
        fail("--env: which env? e.g. --env espl/Math-v0 (`espl envs list`), or --suite NAME")
    ray = (ray_address, ray_workers) if backend_opt == "ray" else None
    _eval_env(env, policy_spec, prompt, episodes or 32, samples, seed, split, params, parse_env_args(env_arg),
              max_batch, as_json, out, ray, resume_out, placement)


def _policy_spec(model: str, base_url: Optional[str], llamacpp: bool, device: str, api_key: Optional[str],
                 tool_format: str, threads: int, max_batch: Optional[int]) -> "PolicySpec":
    """The `PolicySpec` the flags describe (checked before any model loads)."""
    from espl.agents.policy import PolicySpec

    if tool_format not in ("native", "hermes"):
        fail(f"--tool-format {tool_format!r}: must be native or hermes")
    if llamacpp and base_url:
        fail("--llamacpp starts its own llama.cpp server; --base-url talks to a running one: give one of them")
    if threads < 1:
        fail(f"--threads {threads}: must be >= 1")
    backend: Backend = "openai" if base_url else "llamacpp" if llamacpp else "hf"
    try:
        return PolicySpec(backend=backend, model=model, device=device, base_url=base_url, api_key=api_key,
                          tool_format=cast("ToolFormat", tool_format), threads=threads if llamacpp else None,
                          parallel=max_batch or 4)
    except ValueError as exc:  # names the field: device, base_url, ...
        fail(_flag_error(exc))


def _start(policy_spec: "PolicySpec", ray: tuple[str | None, int] | None):
    """(policy, rollout_fn, close): the policy built here, or (ray) Ray workers that each build their own."""
    from espl.agents.policy import build_policy

    try:
        if ray is None:
            return build_policy(policy_spec), None, lambda: None
        from espl.agents.distributed import RayRollout, WorkerPolicy

        if policy_spec.backend == "hf":  # the workers load the model; here only its name is checked
            from espl.agents.models import resolve_model

            resolve_model(policy_spec.model)
        address, workers = ray
        gpus = 1 if policy_spec.device.startswith("cuda") and policy_spec.backend != "openai" else 0
        rr = RayRollout(WorkerPolicy(policy_spec), address=address, num_workers=workers, gpus_per_worker=gpus)
        return None, rr.rollout, rr.close
    except (ValueError, FileNotFoundError) as exc:
        fail(f"--model: {exc}")


def _eval_env(env, policy_spec, prompt, episodes, samples, seed, split, params, env_kwargs, max_batch,
              as_json, out, ray=None, resume=False, placement="system") -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from espl.agents.evaluate import EpisodeLog, EvalLogError, evaluate
    from espl.trainer.config import ConfigError, check_env

    try:  # before the model loads: the id (with "did you mean") and the keyword arguments the env takes
        check_env(env, env_kwargs, field_name="--env", kwargs_name="--env-arg")
    except ConfigError as exc:
        fail(str(exc))
    if split not in ("train", "test"):
        fail(f"--split {split!r}: must be train or test")
    from espl.agents.evaluate import check_distinct

    try:  # a split of fewer distinct tasks than --episodes would count some twice
        check_distinct(env, episodes, {**env_kwargs, "split": split}, field_name="--episodes")
    except (ValueError, ImportError) as exc:  # also an env argument the env refuses, or its data missing
        fail(str(exc))
    model = policy_spec.model
    options = {"env": env, "model": model, "system_prompt": prompt, "episodes": episodes, "samples": samples,
               "seed": seed, "split": split, "env_kwargs": env_kwargs, "params": repr(params)}
    if placement != "system":  # only then: an older DIR (no such key) continues under the default
        options["placement"] = placement
    try:
        log = EpisodeLog(out, options, resume) if out is not None else None
    except EvalLogError as exc:
        fail(str(exc))
    policy, rollout_fn, close = _start(policy_spec, ray)
    if log is not None:  # episodes go to OUT/trajectories.jsonl chunk by chunk, as they finish
        rollout_fn = log.wrap(rollout_fn, chunk=max_batch or 8)
    with Progress(TextColumn(f"{env}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=as_json) as bar:
        task = bar.add_task("episodes", total=episodes * samples)
        try:
            result = evaluate(env, policy, episodes=episodes, params=params, system_prompt=prompt, samples=samples,
                              seed=seed, split=split, env_kwargs=env_kwargs, max_batch=max_batch,
                              progress=lambda done, total: bar.update(task, completed=done), rollout_fn=rollout_fn,
                              placement=placement)
        except KeyboardInterrupt:
            bar.stop()
            _interrupted(log, episodes * samples)
        finally:
            close()
    result.model = model
    if log is not None:
        log.write_summary(result)
    if as_json:
        sys.stdout.write(json.dumps({**result.to_json(), **({"out": str(out)} if out is not None else {})},
                                    default=str) + "\n")
    else:
        _print_summary(result, out)
    if result.error:
        if not as_json:
            err_console.print(f"[red]{result.error}[/red]")
        raise typer.Exit(1)


def _interrupted(log, total: int) -> NoReturn:
    if log is None:
        err_console.print("interrupted; nothing was kept (with --out DIR finished episodes are written as "
                          "they finish)", soft_wrap=True)
    else:
        import shlex

        again = " ".join(shlex.quote(a) for a in sys.argv[1:] if a != "--continue")
        err_console.print(f"interrupted: {log.written} of {total} episodes are in {log.path}; continue with: "
                          f"espl {again} --continue", soft_wrap=True, markup=False, highlight=False)
    raise typer.Exit(130) from None


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
    if r.tool_calls or r.tool_errors:
        table.add_row("tool calls", f"{r.tool_calls} ({r.tool_errors} errors)")
    table.add_row("speed", f"{r.generated_tokens} tokens in {r.seconds:.1f} s = {r.tokens_per_s:.1f} tokens/s")
    table.add_row("system prompt", (r.system_prompt or "(none)")[:200]
                  + (f"  (placed in the {r.placement} turn)" if r.placement == "user" else ""))
    if out is not None:
        table.add_row("trajectories", str(out / "trajectories.jsonl"))
    con.print(table)
