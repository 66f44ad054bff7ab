"""`espl envs list|check`."""

from __future__ import annotations

import json
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="List and check registered environments.", no_args_is_help=True)
console = Console()


@app.command("list")
def list_envs(as_json: bool = typer.Option(False, "--json", metavar="", help="Print a JSON list of objects.")) -> None:
    """Every registered espl env (and plugin env): id, family, max turns, description."""
    from espl.envs.registration import describe, env_ids

    rows = [describe(env_id) for env_id in env_ids()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{len(rows)} environments")
    for col in ("id", "family", "max turns", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["id"], r["family"], str(r["max_turns"]), r["description"])
    console.print(table)


@app.command("check")
def check(ids: Optional[List[str]] = typer.Argument(None, help="Env ids (default: every registered one).")) -> None:
    """Run Gymnasium's checker and the espl chat contract on each env; exit 1 naming a failing check."""
    import gymnasium as gym

    from espl.envs.checker import check_chat_env
    from espl.envs.registration import env_ids, get_spec

    targets = ids or env_ids()
    failed: list[str] = []
    for env_id in targets:
        try:
            get_spec(env_id)
        except gym.error.Error as exc:
            console.print(f"[red]FAIL[/red] {env_id}: {exc}")
            failed.append(f"{env_id}: unknown id")
            continue
        for res in check_chat_env(env_id):
            mark = "[green]ok[/green]  " if res.ok else "[red]FAIL[/red]"
            console.print(f"{mark} {env_id}: {res.name}" + (f" - {res.detail}" if res.detail else ""))
            if not res.ok:
                failed.append(f"{env_id}: {res.name}")
    if failed:
        console.print(f"[red]{len(failed)} failing check(s):[/red] " + "; ".join(failed))
        raise typer.Exit(1)
    console.print(f"[green]all checks passed on {len(targets)} env(s)[/green]")
