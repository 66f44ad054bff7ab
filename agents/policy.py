"""The `Policy` protocol: what the rollout loop, the trainer and the mutator need from a model backend.

Backends (HF transformers, vLLM, OpenAI-compatible servers) implement it; nothing above agents/ imports
transformers, vLLM or openai directly.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

from espl.types import Completion, Message, SamplingParams


@runtime_checkable
class Policy(Protocol):
    """A chat model that continues a batch of conversations.

    `generate` returns one `Completion` per conversation, in order. `tools` are OpenAI-style JSON schemas
    that the backend renders into the prompt (chat template `tools=`) when the model supports them.
    Trainable backends fill `Completion.prompt_ids/token_ids/logprobs`; others leave them empty.
    A backend failure raises; a reply the model garbled is a normal completion for the env to score.
    """

    name: str

    def generate(
        self,
        conversations: Sequence[Sequence[Message]],
        params: SamplingParams,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> list[Completion]: ...
