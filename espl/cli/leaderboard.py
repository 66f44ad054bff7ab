"""`espl leaderboard show|html|export|import|suites`: views of the results that `espl eval --suite` stores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Rank agents evaluated with `espl eval --suite`: table, HTML page, export/import.",
                  no_args_is_help=True)
console = Console()

DB_HELP = "Leaderboard database (default: the user data dir, or $ESPL_LEADERBOARD_DB)."


def open_store(db: Optional[Path], *, must_exist: bool = False):
    """The store, or a clean exit naming the problem (foreign/corrupt file, missing database)."""
    from espl.leaderboard.store import Store, StoreError, default_db_path

    path = db if db is not None else default_db_path()
    if must_exist and not path.exists():
        console.print(f"[red]no leaderboard database at {path}[/red]: run `espl eval --suite smoke --model ...` "
                      "first, or pass --db PATH")
        raise typer.Exit(1)
    try:
        return Store(path)
    except StoreError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None


def _board(db: Optional[Path], env: Optional[str]) -> dict:
    from espl.leaderboard.board import board_data

    with open_store(db, must_exist=True) as store:
        try:
            return board_data(store, env)
        except ValueError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None


@app.command("show")
def show(
    env: Optional[str] = typer.Option(None, "--env", help="Rank on one env (id or env key) instead of overall."),
    as_json: bool = typer.Option(False, "--json", help="Print the board as one JSON object."),
    db: Optional[Path] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Ranked table: rank, agent, rating (TrueSkill μ - 3σ), score ± 95 % CI, pass@1, episodes."""
    board = _board(db, env)
    if as_json:
        typer.echo(json.dumps(board, indent=2, ensure_ascii=False))
        return
    if not board["rows"]:
        typer.echo(f"no episodes stored in {board['db']} yet")
        return
    title = f"leaderboard · {board['env'] or 'overall'} · {len(board['rows'])} agents"
    table = Table(title=title, caption=f"{board['db']} · envs: {', '.join(board['envs'])}")
    for col, justify in (("rank", "right"), ("agent", "left"), ("rating", "right"), ("μ ± σ", "right"),
                         ("score ± CI", "right"), ("pass@1", "right"), ("episodes", "right")):
        table.add_column(col, justify=justify)
    for r in board["rows"]:
        p1 = r["score"]["pass_at_k"].get("1")
        table.add_row(
            str(r["rank"]), r["name"], f"{r['rating']['conservative']:.2f}",
            f"{r['rating']['mu']:.1f} ± {r['rating']['sigma']:.1f}",
            f"{r['score']['mean']:.3f} ± {r['score']['ci95']:.3f}", "–" if p1 is None else f"{p1:.3f}",
            str(r["score"]["episodes"]),
        )
    console.print(table)


@app.command("html")
def html(
    out: Path = typer.Option(..., "--out", help="Directory to write index.html (and board.json) into."),
    env: Optional[str] = typer.Option(None, "--env", help="Rank on one env instead of overall."),
    db: Optional[Path] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Write a static page (sortable table, per-env bar charts, prompts on click) that works offline."""
    from espl.leaderboard.html import write_html

    try:
        page = write_html(_board(db, env), out)
    except NotADirectoryError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    typer.echo(f"wrote {page} (open it in a browser; no network needed)")


@app.command("export")
def export(
    file: Path = typer.Argument(..., help="JSON file to write."),
    db: Optional[Path] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Write every agent, run and episode as JSON (keyed by content hash, mergeable with `import`)."""
    with open_store(db, must_exist=True) as store:
        data = store.export_data()
    file.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    typer.echo(f"wrote {file}: {len(data['agents'])} agents, {len(data['runs'])} runs, "
                  f"{len(data['episodes'])} episodes")


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
        console.print(f"[red]import {file}: cannot read JSON ({exc})[/red]")
        raise typer.Exit(1) from None
    with open_store(db) as store:
        try:
            added = store.import_data(data)
        except StoreError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
    typer.echo(f"imported into {store.path}: " + ", ".join(f"{v} new {k}" for k, v in added.items()))


@app.command("suites")
def suites(as_json: bool = typer.Option(False, "--json", help="Print a JSON list.")) -> None:
    """The built-in eval suites (`espl eval --suite NAME`); your own: `--suite path/to/suite.toml`."""
    from espl.leaderboard.suites import builtin_suites, load_suite

    loaded = [load_suite(n) for n in builtin_suites()]
    rows = [{"name": s.name, "description": s.description, "episodes": s.num_episodes,
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
