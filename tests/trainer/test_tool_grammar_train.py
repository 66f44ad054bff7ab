"""`rollout.tool_grammar` in a real training step (SmolLM2-135M + LoRA, espl/ToolMath-v0): the trainer's rollouts
are decoded under the tool grammar, and before the update the trainer's log-probs of those tokens equal the
sampler's (importance ratio 1), the masks rebuilt from `Trajectory.tool_grammar`."""

from __future__ import annotations

import math

import pytest
import torch

from espl.agents.rollout import rollout
from espl.trainer.espl import TrainConfig, Trainer

pytestmark = pytest.mark.slow


def test_training_step_with_tool_grammar_is_on_policy():
    seen: dict[str, float] = {}
    captured = []

    def capture(*args, **kwargs):
        out = rollout(*args, **kwargs)
        captured.extend(out)
        with torch.no_grad():  # before the update: the weights that sampled
            lp = trainer.policy.trajectory_logprobs(out, [1.0] * len(out), trainer.cfg.rollout.temperature)
        m = lp.mask.bool()
        seen["gap"] = max(seen.get("gap", 0.0), float((lp.logprobs[m] - lp.old_logprobs[m]).abs().max()))
        return out

    cfg = TrainConfig.from_dict({"mode": "rl", "env": "espl/ToolMath-v0", "data.batch_problems": 2,
                                 "selection.prompts_per_step": 1, "rollout.rollouts_per_pair": 2,
                                 "rollout.max_new_tokens": 32, "rollout.tool_grammar": "required", "seed": 2})
    trainer = Trainer(cfg, None, rollout_fn=capture)
    try:
        m = trainer.step()
    finally:
        trainer.close()
    assert len(captured) == 4
    for t in captured:
        assert t.tool_grammar is not None and t.tool_grammar["mode"] == "required"
        assert len(t.tool_grammar["spans"]) == t.num_turns
        first = next(msg for msg in t.messages if msg["role"] == "assistant")
        assert first["content"].startswith("<tool_call>\n"), first
    assert seen["gap"] < 1e-4, seen
    assert math.isfinite(m.loss)
