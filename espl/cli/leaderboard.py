"""`espl leaderboard show|html|export|import|suites`: views of the results that `espl eval --suite` stores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Rank agents evaluated with `espl eval --suite`: table, HTML page, export/import.",
                  no_args_is_help=True)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print an error (stderr, unwrapped: it names paths and ids) and exit `code`: 2 for bad input (as every
    espl command), 1 when the work itself failed (a server down, a damaged database)."""
    from rich.markup import escape

    err_console.print(f"[red]error:[/red] [red]{escape(message)}[/red]", highlight=False)
    raise typer.Exit(code)

DB_HELP = "Leaderboard database (default: the user data dir, or $ESPL_LEADERBOARD_DB)."


def open_store(db: Optional[Path], *, must_exist: bool = False, read_only: bool = False):
    """The store, or a clean exit naming the problem (foreign/corrupt/read-only file, missing database).
    `read_only`: for the reading commands, which then work on a database nobody here may write."""
    from espl.leaderboard.store import Store, StoreError, default_db_path

    path = db if db is not None else default_db_path()
    if (must_exist or read_only) and not path.exists():
        fail(f"no leaderboard database at {path}: run `espl eval --suite smoke --model ...` first, or pass --db PATH")
    try:
        return Store(path, read_only=read_only)
    except StoreError as exc:
        fail(str(exc))


def write_failed(flag: str, path: Path, exc: OSError) -> NoReturn:
    """An output file or folder that cannot be written: one line naming it and the fix."""
    why = exc.strerror or str(exc)
    fail(f"{flag} {path}: cannot write there ({why}); choose a writable location")


def incomplete_mark(row: dict) -> str:
    """" · incomplete 4/12" for an agent with fewer episodes stored than its suites plan, else ""."""
    p = row.get("progress") or {}
    return "" if p.get("complete", True) else f" · incomplete {p['done']}/{p['planned']}"


def _board(db: Optional[Path], env: Optional[str]) -> dict:
    from espl.leaderboard.board import board_data

    with open_store(db, read_only=True) as store:
        try:
            return board_data(store, env)
        except ValueError as exc:
            fail(str(exc))


@app.command("show")
def show(
    env: Optional[str] = typer.Option(None, "--env", help="Rank on one env (id or env key) instead of overall."),
    as_json: bool = typer.Option(False, "--json", metavar="", help="Print the board as one JSON object."),
    db: Optional[Path] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Ranked table: rank, agent, rating (TrueSkill μ - 3σ), score ± 95 % CI, pass@1, episodes.
    Agents whose eval stopped early are marked in a done/planned column ("6/12 incomplete")."""
    from rich.console import JustifyMethod
    from rich.markup import escape

    board = _board(db, env)
    if as_json:
        typer.echo(json.dumps(board, indent=2, ensure_ascii=False))
        return
    if not board["rows"]:
        typer.echo(f"no episodes stored in {board['db']} yet")
        return
    title = f"leaderboard · {board['env'] or 'overall'} · {len(board['rows'])} agents"
    table = Table(title=title, caption=f"{board['db']} · envs: {', '.join(board['envs'])}")
    any_incomplete = any(incomplete_mark(r) for r in board["rows"])
    columns: list[tuple[str, JustifyMethod]] = [("rank", "right"), ("agent", "left"), ("rating", "right"), ("μ ± σ", "right"),
               ("score ± CI", "right"), ("pass@1", "right"), ("episodes", "right")]
    if any_incomplete:  # done/planned episodes, shown when some agent's eval stopped early
        columns.append(("done/planned", "right"))
    for col, justify in columns:
        table.add_column(col, justify=justify, no_wrap=col == "done/planned")
    for r in board["rows"]:
        p1 = r["score"]["pass_at_k"].get("1")
        cells = [
            str(r["rank"]), escape(r["name"]), f"{r['rating']['conservative']:.2f}",
            f"{r['rating']['mu']:.1f} ± {r['rating']['sigma']:.1f}",
            f"{r['score']['mean']:.3f} ± {r['score']['ci95']:.3f}", "–" if p1 is None else f"{p1:.3f}",
            str(r["score"]["episodes"]),
        ]
        if any_incomplete:
            p = r["progress"]
            cells.append(f"[yellow]{p['done']}/{p['planned']} incomplete[/yellow]" if not p["complete"]
                         else f"{p['done']}/{p['planned']}")
        table.add_row(*cells)
    console.print(table)
    incomplete = [r for r in board["rows"] if incomplete_mark(r)]
    if incomplete:
        console.print(f"{len(incomplete)} agent(s) incomplete (episodes done/planned): their eval stopped early; "
                      "run the same `espl eval --suite ...` again to finish it", highlight=False)


@app.command("html")
def html(
    out: Path = typer.Option(..., "--out", help="Directory to write index.html (and board.json) into."),
    env: Optional[str] = typer.Option(None, "--env", help="Rank on one env instead of overall."),
    db: Optional[Path] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Write a static page (sortable table, per-env bar charts, prompts on click) that works offline."""
    from espl.leaderboard.html import write_html

    board = _board(db, env)
    try:
        page = write_html(board, out)
    except NotADirectoryError as exc:
        fail(str(exc))
    except OSError as exc:  # a read-only folder, no space left
        write_failed("--out", out, exc)
    typer.echo(f"wrote {page} (open it in a browser; no network needed)")


@app.command("export")
def export(
    file: Path = typer.Argument(..., help="JSON file to write."),
    db: Optional[Path] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Write every agent, run and episode as JSON (keyed by content hash, mergeable with `import`)."""
    with open_store(db, read_only=True) as store:
        data = store.export_data()
    try:
        file.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    except OSError as exc:
        write_failed("export", file, exc)
    incomplete = sum(not a["progress"]["complete"] for a in data["agents"])
    typer.echo(f"wrote {file}: {len(data['agents'])} agents, {len(data['runs'])} runs, "
               f"{len(data['episodes'])} episodes" + (f" ({incomplete} agents incomplete)" if incomplete else ""))


@app.command("import")
def import_(
    file: Path = typer.Argument(..., help="JSON file written by `espl leaderboard export`."),
    db: Optional[Path] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Merge an export into the database; agents, runs and episodes already there are not duplicated."""
    from espl.leaderboard.store import StoreError

    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        fail(f"import {file}: cannot read JSON ({exc})")
    with open_store(db) as store:
        try:
            added = store.import_data(data)
        except StoreError as exc:
            fail(str(exc))
    typer.echo(f"imported into {store.path}: " + ", ".join(f"{v} new {k}" for k, v in added.items()))


@app.command("suites")
def suites(as_json: bool = typer.Option(False, "--json", metavar="", help="Print a JSON list.")) -> None:
    """The built-in eval suites (`espl eval --suite NAME`); your own: `--suite path/to/suite.toml`."""
    from espl.leaderboard.suites import builtin_suites, load_suite

    loaded = [load_suite(n) for n in builtin_suites()]
    rows: list[dict[str, Any]] = [{"name": s.name, "description": s.description, "episodes": s.num_episodes,
             "envs": [{"id": e.env_id, "episodes": e.episodes, "seed": e.seed, "split": e.split,
                       "samples": e.samples, "kwargs": e.env_kwargs} for e in s.entries]} for s in loaded]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="eval suites")
    for col in ("name", "envs", "episodes", "description"):
        table.add_column(col)
    for r in rows:
        envs = ", ".join(f"{e['id']}×{e['episodes']}" + (f"×{e['samples']}" if e["samples"] > 1 else "")
                         for e in r["envs"])
        table.add_row(r["name"], envs, str(r["episodes"]), r["description"])
    console.print(table)


# ---- `espl eval --suite / --from-run` (options of the eval command, which calls this) -------------------------
def eval_suite_command(
    *,
    suite: Optional[str],
    db: Optional[Path],
    from_run: Optional[Path],
    policy_spec,  # PolicySpec of the model to evaluate; built only when something is left to run
    model: str,
    backend: str,
    system_prompt: Optional[str],
    params,  # SamplingParams
    episodes: Optional[int] = None,
    as_json: bool = False,
    name: Optional[str] = None,
    chunk_size: Optional[int] = None,
) -> None:
    """Evaluate an agent (or a training run's newest and best prompts) on a suite and store the results.

    `--from-run RUN_DIR` without `--suite` runs the run's own env on its test split (`--episodes`, default 32).
    """
    from espl.agents.errors import RolloutError
    from espl.leaderboard.runner import DEFAULT_CHUNK, agent_spec, run_suite
    from espl.leaderboard.suites import SuiteError, load_suite

    try:
        chosen = load_suite(suite) if suite else None
    except SuiteError as exc:
        fail(str(exc), 2)

    if from_run is not None:
        from espl.leaderboard.from_run import RunDirError, own_suite, read_run, run_jobs

        if backend != "hf":
            fail("--from-run: the run's adapter is LoRA weights for the transformers backend; drop --base-url", 2)
        try:
            run = read_run(from_run)
            jobs = run_jobs(run, params, device=policy_spec.device)
        except (RunDirError, ValueError, KeyError) as exc:
            fail(str(exc), 2)
        chosen = chosen or own_suite(run, episodes or 32)
    else:
        from espl.leaderboard.from_run import SuiteJob

        if chosen is None:
            raise ValueError("eval_suite_command: needs --suite or --from-run")
        jobs = [SuiteJob(agent_spec(model, params, system_prompt=system_prompt, backend=backend, name=name),
                         policy_spec, {})]

    from espl.envs.registration import get_spec

    try:
        for entry in chosen.entries:
            get_spec(entry.env_id)
    except Exception as exc:  # gymnasium's unregistered-env error, with its close matches
        fail(f"suite {chosen.name}: env {entry.env_id!r}: {exc}", 2)
    from espl.agents.evaluate import check_distinct

    for entry in chosen.entries:  # before any model loads: no entry may count a task twice
        try:
            check_distinct(entry.env_id, entry.episodes, {**entry.env_kwargs, "split": entry.split},
                           field_name="episodes")
        except (ValueError, ImportError) as exc:
            fail(f"suite {chosen.name}: env {entry.env_id!r}: {exc}", 2)

    from espl.agents.policy import build_policy

    built: dict = {}  # PolicySpec -> policy: one model load for jobs that share a spec (a run's two prompts)
    results = []
    with open_store(db) as store:
        for job in jobs:
            spec, pspec, extra = job.agent, job.policy, job.extra
            agent_id = store.add_agent(spec)
            left = sum(len(store.missing_episodes(agent_id, e)) for e in chosen.entries)
            if not as_json:
                console.print(f"[bold]{spec.display_name}[/bold] on suite {chosen.name}: {left} of "
                              f"{chosen.num_episodes} episodes to run (db {store.path})")
            try:
                if left and pspec not in built:
                    built[pspec] = build_policy(pspec)
                policy = built[pspec] if left else None
            except (ValueError, FileNotFoundError, OSError) as exc:  # unknown alias, missing files, unfit adapter
                fail(f"{'--from-run' if pspec.adapter else '--model'}: {exc}", 2)
            try:
                results.append(_run_with_progress(store, chosen, spec, policy, params, extra, as_json,
                                                  chunk_size or DEFAULT_CHUNK, run_suite))
            except RolloutError as exc:
                fail(f"{exc}. The episodes that finished are stored: run the same command again to resume.")
    if as_json:
        total = sum(e.score.episodes for r in results for e in r.envs)
        means = [e.score.mean for r in results for e in r.envs]
        typer.echo(json.dumps({
            "suite": chosen.name, "env": [e.env_id for e in chosen.entries], "model": jobs[0].agent.model,
            "episodes": total, "mean_reward": sum(means) / len(means) if means else None, "db": str(results[0].db),
            "agents": [r.to_dict() for r in results],
        }, indent=2))
        return
    for r in results:
        _print_result(r)
    console.print(f"stored in {results[0].db}; `espl leaderboard show --db {results[0].db}` ranks every agent")


def _run_with_progress(store, suite, spec, policy, params, extra, quiet, chunk_size, run_suite):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if policy is None:  # everything stored already: summarise without loading a model
        return run_suite(store, suite, spec, None, params, extra_metadata=extra)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=quiet) as bar:
        task = bar.add_task("episodes", total=None)

        def progress(env_key: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description=env_key)

        return run_suite(store, suite, spec, policy, params, chunk_size=chunk_size, progress=progress,
                         extra_metadata=extra)


def _print_result(result) -> None:
    table = Table(title=f"{result.agent_name} · agent {result.agent_hash[:12]}")
    for col in ("env", "ran", "stored before", "mean ± 95% CI", "pass@k", "reasons"):
        table.add_column(col)
    for e in result.envs:
        table.add_row(e.env_key, str(e.ran), str(e.skipped), f"{e.score.mean:.3f} ± {e.score.ci95:.3f}",
                      " ".join(f"@{k} {v:.3f}" for k, v in e.score.pass_at_k.items()),
                      ", ".join(f"{k} {v}" for k, v in e.reasons.items()))
    console.print(table)
