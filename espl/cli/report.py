"""`espl report RUN_DIR`: one static HTML page of a training run (trainer/report.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console


def report(
    run_dir: Path = typer.Argument(..., help="A RUN_DIR written by `espl train`."),
    out: Optional[Path] = typer.Option(None, "--out", help="The HTML file to write (default RUN_DIR/report.html)."),
    samples: int = typer.Option(6, "--samples", help="Sample trajectories to show, spread over the run."),
) -> None:
    """One self-contained HTML page of a run: reward and held-out curves, each prompt's μ ± σ over steps, the
    lineage tree with each child's change, score histories, mutation outcomes and sample trajectories."""
    from espl.cli.train import fail
    from espl.trainer.report import ReportError, write_report

    if samples < 0:
        fail(f"--samples {samples}: must be >= 0")
    try:
        path, run = write_report(run_dir, out, samples)
    except ReportError as exc:
        fail(str(exc))
    except OSError as exc:  # --out in a read-only place, a full disk
        fail(f"--out: cannot write the report ({exc.strerror}: {exc.filename}); choose another --out")
    from rich.markup import escape

    console = Console()
    for note in run.notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}", soft_wrap=True, highlight=False)
    console.print(f"wrote {path} ({run.steps_done} steps, {len(run.prompts)} prompts, {len(run.mutations)} "
                  f"mutations); open {path.resolve().as_uri()}", soft_wrap=True, highlight=False, markup=False)
