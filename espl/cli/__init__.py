"""The `espl` command line (typer + rich). Each command group lives in its own module of this package and
imports heavy libraries inside its commands, so `espl --help` starts fast."""

from __future__ import annotations

from typing import Optional

import typer

import espl
from espl.cli import envs as envs_cli
from espl.cli import leaderboard as leaderboard_cli

app = typer.Typer(
    name="espl",
    help="Train LLM agents with RL and Evolutionary System Prompt Learning in multi-turn envs.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(envs_cli.app, name="envs")
app.add_typer(leaderboard_cli.app, name="leaderboard")
app.add_typer(__import__("espl.cli.sandbox", fromlist=["app"]).app, name="sandbox")
from espl.cli import train as train_cli  # noqa: E402  (train, prompts, plot)

app.command("train")(train_cli.train)
app.command("prompts")(train_cli.prompts)
app.command("plot")(train_cli.plot)
app.command("eval")(__import__("espl.cli.eval", fromlist=["eval_command"]).eval_command)
app.command("report")(__import__("espl.cli.report", fromlist=["report"]).report)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"espl-gym {espl.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True, metavar="",
                                   help="Print the version."),
) -> None:
    """espl-gym command line."""


def main() -> None:
    app()
