"""What the commands print: quiet libraries by default (`-v` shows them), one unwrapped line per step."""

from __future__ import annotations

import logging
import math
import os
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from espl.trainer.espl import StepMetrics


def quiet_libraries(verbose: bool = False) -> None:
    """No "Loading weights" / download bars and no library FutureWarnings unless `verbose`.

    Set before transformers / huggingface_hub are imported (they read the variables at import), and again
    through their logging APIs in case they already were."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if verbose:
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*tensorboard.*")
    for name in ("transformers", "huggingface_hub", "peft", "accelerate", "torch", "urllib3", "httpx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import sys

    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def step_line(m: StepMetrics, total: int) -> str:
    """One line per step, whatever the terminal width (printed with soft_wrap: never wrapped); tool calls and
    context overflows only when the step had any."""
    tools = ""
    if m.tool_calls or m.tool_errors:
        tools = f"  tools {m.tool_calls} ({m.tool_errors} errors)"
    if m.context_overflows:
        tools += f"  context overflows {m.context_overflows}"
    held_out = "" if math.isnan(m.test_reward) else f"  held-out {m.test_reward:.3f}"  # the newest prompt's mean
    eval_time = f" / eval {m.time_eval:.1f}" if m.time_eval else ""
    return (f"step {m.step + 1}/{total}  reward {m.mean_reward:.3f}{held_out}  pool {m.pool_size}  "
            f"best #{m.best_id} μ {m.best_mu:.2f}±{m.best_sigma:.2f}  skip {m.skip_ratio:.2f}  loss {m.loss:.4g}  "
            f"mutation {m.mutation}{tools}  time {m.time_total:.1f}s "
            f"(rollout {m.time_rollout:.1f} / update {m.time_update:.1f} / mutation {m.time_mutation:.1f}{eval_time})")
