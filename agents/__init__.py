"""Policies (HF transformers, vLLM, OpenAI-compatible), tool-call parsing and the rollout loop."""

from espl.agents.policy import Policy

__all__ = ["Policy"]
