"""Policies (HF transformers, vLLM, OpenAI-compatible), tool-call parsing and the rollout loop.

Importing this package imports no torch/transformers/openai: the backends load them when constructed.
"""

from espl.agents.errors import GenerationError, RolloutError
from espl.agents.evaluate import EvalResult, evaluate
from espl.agents.hf import HFPolicy
from espl.agents.openai_policy import OpenAIPolicy
from espl.agents.models import DEFAULT_MODEL, ModelSpec, load_model, load_tokenizer, resolve_model
from espl.agents.policy import (
    JsonPolicy, LoraSettings, Policy, PolicySpec, TokenPolicy, TrainablePolicy, TrajectoryLogprobs, build_policy,
)
from espl.agents.rollout import Episode, RolloutStats, rollout
from espl.agents.templating import ChatRenderer

__all__ = [
    "DEFAULT_MODEL", "ChatRenderer", "Episode", "EvalResult", "GenerationError", "HFPolicy", "JsonPolicy",
    "LoraSettings", "ModelSpec", "OpenAIPolicy", "Policy", "PolicySpec", "RolloutError", "RolloutStats",
    "TokenPolicy", "TrainablePolicy", "TrajectoryLogprobs", "build_policy", "evaluate", "load_model",
    "load_tokenizer", "resolve_model", "rollout",
]
