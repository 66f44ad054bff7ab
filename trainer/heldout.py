"""Held-out evaluation of a training run (ESPL_SPEC "Evaluation"): which prompts, which seeds, what is reported.

The reference evaluates its newest prompt after every step on the whole test set with 10 samples per problem
and keeps the checkpoint with the best test accuracy. Ours (`[evaluation]` in trainer/config.py) evaluates
every `every` steps and after the last one, on a fixed held-out set (test-split tasks 0..problems-1), with
`samples` samples per task, and for up to three prompts on the same weights:

    newest  the pool's newest prompt (in mode rl: the fixed prompt, the only one in its pool)
    best    the best-rated prompt by exploit = mu - 2 sigma (what a run would deploy)
    none    no system prompt at all (is a prompt helping these weights?)

Every evaluation of a run samples task i's sample s from `sample_seed(i, s)`, a seed that depends on neither
the step, the prompt nor the run seed: two evaluations differ only by their weights and their prompt, so
steps, prompts and runs (modes, seeds) compare paired, task by task. Prompts with the same principles (the
root prompt and `none`; `newest` and `best` when they are one prompt) are evaluated once and reported under
each label. Statistics (mean, unbiased pass@k) are agents/stats.py's.

An evaluation of several prompts can take longer than a step (300 GSM tasks x 256 tokens: ~1 h per prompt
on 2 CPU cores). Each prompt's rewards go to RUN_DIR/evals_partial.json as soon as they are computed
(`PartialEvaluations`), keyed by a digest of the weights and of the run's config: a run killed during its
evaluation redoes the cut-off step from its checkpoint and then reuses every prompt already evaluated on
bit-identical weights (any other weights or config: the key differs and the prompt runs again). The file is
plain JSON and is removed when the next checkpoint is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from espl.agents.stats import SUCCESS_REWARD, mean_ci95, pass_at_ks
from espl.seeds import derive_seed
from espl.trainer.checkpoint import write_json_atomic
from espl.trainer.pool import PromptPool, PromptRecord


def sample_seed(task: int, sample: int) -> int:
    """The sampling seed of held-out task `task`, sample `sample`: the same in every evaluation of every run
    (no step, prompt or run seed in it), so evaluations pair task by task."""
    return derive_seed("eval-episode", task, sample)


# the rollout-level seed (text backends without per-episode seeds draw one per generation round from it)
PARAMS_SEED = derive_seed("eval")


@dataclass(frozen=True)
class HeldOutResult:
    """One prompt's held-out evaluation after one step: one line of RUN_DIR/evals.jsonl."""

    step: int  # the step after which it ran, with that step's updated weights
    prompt: str  # "newest" | "best" | "none"
    prompt_id: int | None  # its pool id; None for no prompt
    principles: tuple[str, ...]
    rewards: tuple[tuple[float, ...], ...]  # [task][sample]

    @property
    def tasks(self) -> int:
        return len(self.rewards)

    @property
    def samples(self) -> int:
        return len(self.rewards[0]) if self.rewards else 0

    @property
    def n(self) -> int:
        """Episodes evaluated (tasks x samples)."""
        return sum(len(r) for r in self.rewards)

    @property
    def mean(self) -> float:
        return mean_ci95(self.flat)[0]

    @property
    def ci95(self) -> float:
        return mean_ci95(self.flat)[1]

    @property
    def flat(self) -> list[float]:
        """Every episode's reward, task-major (task 0's samples first): the order that pairs across results."""
        return [r for task in self.rewards for r in task]

    @property
    def successes(self) -> list[float]:
        """1.0 for each episode that solved its task (reward >= SUCCESS_REWARD), else 0.0; `flat`'s order."""
        return [1.0 if r >= SUCCESS_REWARD else 0.0 for r in self.flat]

    @property
    def pass_at_k(self) -> dict[int, float]:
        """pass@k for k = 1, powers of two and `samples` (unbiased estimator, agents/stats.py)."""
        return pass_at_ks(dict(enumerate(self.rewards)))

    def to_json(self) -> dict[str, Any]:
        mean, ci = mean_ci95(self.flat)
        return {"step": self.step, "prompt": self.prompt, "prompt_id": self.prompt_id,
                "principles": list(self.principles), "mean": _finite(mean), "ci95": _finite(ci),
                "pass_at_k": {str(k): v for k, v in self.pass_at_k.items()}, "n": self.n, "tasks": self.tasks,
                "samples": self.samples, "rewards": [list(r) for r in self.rewards]}


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else x


def resolve_prompts(pool: PromptPool, labels: Sequence[str]) -> list[tuple[str, PromptRecord | None]]:
    """(label, prompt) for each label; None is no prompt."""
    chosen = {"newest": lambda: pool.newest, "best": lambda: pool.best("exploit"), "none": lambda: None}
    return [(label, chosen[label]()) for label in labels]


def headline(results: Sequence[HeldOutResult]) -> HeldOutResult | None:
    """The result that `test_reward` reports and the best checkpoint is chosen by: the newest prompt's (the
    first evaluated prompt's when `newest` is not among them)."""
    for r in results:
        if r.prompt == "newest":
            return r
    return results[0] if results else None


@contextlib.contextmanager
def rng_untouched() -> Iterator[None]:
    """Restores the global torch (CPU and CUDA), python and numpy RNG states on exit: an evaluation draws
    nothing from the streams the training step and the checkpoint's rng.json hold, so turning evaluation on
    or off never changes a training trajectory. (Sampling itself uses per-row generators, agents/hf.py; this
    guards whatever else may draw.)"""
    import numpy as np
    import torch

    states = (torch.get_rng_state(), random.getstate(), np.random.get_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        random.setstate(states[1])
        np.random.set_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def read_evals(run_dir: Any) -> list[dict[str, Any]]:
    """The lines of RUN_DIR/evals.jsonl (empty when the run has none); a line cut off by a kill is skipped."""
    import json
    from pathlib import Path

    path = Path(run_dir) / "evals.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and {"step", "prompt", "mean", "pass_at_k"} <= set(row):
            rows.append(row)
    return rows


PARTIAL_EVALS = "evals_partial.json"

Rewards = tuple[tuple[float, ...], ...]  # [task][sample]


def weights_digest(tensors: Mapping[str, Any]) -> str:
    """sha256 over the trainable tensors (names, dtypes, shapes and bytes, in name order): which weights an
    evaluation saw. Two digests are equal only for bit-identical weights."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{t.numel()}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def eval_key(weights: str, config: Mapping[str, Any], principles: Sequence[str]) -> str:
    """The identity of one prompt's held-out evaluation: the weights' digest, the whole run config (held-out
    set, sampling, env, model, placement: anything that could change a reward) and the principles."""
    cfg = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    return json.dumps({"weights": weights, "config": cfg, "principles": list(principles)}, sort_keys=True)


class PartialEvaluations:
    """RUN_DIR/evals_partial.json: {key: rewards} of each prompt evaluated since the last checkpoint (the
    module doc), rewritten atomically after each prompt, so a kill leaves the previous complete file."""

    def __init__(self, run_dir: Path | None):
        self.path = run_dir / PARTIAL_EVALS if run_dir is not None else None

    def _read(self) -> dict[str, Any]:
        if self.path is None or not self.path.is_file():
            return {}
        data = json.loads(self.path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{self.path}: expected a JSON object of key -> rewards; delete the file to re-evaluate")
        return data

    def get(self, key: str) -> Rewards | None:
        rewards = self._read().get(key)
        return None if rewards is None else tuple(tuple(float(x) for x in task) for task in rewards)

    def put(self, key: str, rewards: Rewards) -> Rewards:
        if self.path is not None:
            write_json_atomic(self.path, {**self._read(), key: [list(r) for r in rewards]})
        return rewards

    def clear(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
