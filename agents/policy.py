"""What a model backend can do, said by Protocols, and the one way to build one: `build_policy(PolicySpec(...))`.

    from espl.agents.policy import PolicySpec, build_policy, TrainablePolicy

    policy = build_policy(PolicySpec(model="smollm2-135m", lora=LoraSettings(r=32)))        # HF + LoRA
    mutator_llm = build_policy(PolicySpec(backend="llamacpp", model="qwen2.5-coder-0.5b", threads=1))
    served = build_policy(PolicySpec(backend="openai", base_url="http://127.0.0.1:8080/v1", model="m"))
    if isinstance(policy, TrainablePolicy): ...   # branch on what the backend can do, never on its class

Capabilities (all `runtime_checkable`; a backend has a capability when it has its methods):

- `Policy`: every backend. `generate(convs, params, tools=None, seeds=None)`, `tokens_generated`, `close()`.
- `TokenPolicy`: token-exact rollouts (HF, vLLM): a `renderer` (agents/templating.py) and `generate_tokens`.
- `TrainablePolicy`: what the trainer needs (HF): trainable parameters, log-probs of recorded trajectories,
  the adapter state (get/load, the checkpoint's format), the PEFT form of the adapter (what Ray workers and
  engines that load adapters from disk take), train/eval switching, and `adapter_disabled()`: a context in
  which the policy generates with its frozen base model (the mutator's view).
- `JsonPolicy`: schema-constrained generation, `generate_json(convs, params, schemas) -> texts` (HF through
  xgrammar, OpenAI-compatible servers through `response_format`). The LLM mutator uses it when present.
- `AdapterFilePolicy`: engines that load a LoRA adapter from a PEFT directory (vLLM).
- `ModelSourcePolicy`: where the weights come from (`model_source()`), recorded by the leaderboard.

Backends: `HFPolicy` (agents/hf.py), `VLLMPolicy` (agents/vllm_policy.py), `OpenAIPolicy`
(agents/openai_policy.py), and "llamacpp": an `OpenAIPolicy` on a llama.cpp server this process starts and
the policy owns (agents/llamacpp.py; `close()` stops it). Heavy libraries load only inside `build_policy`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager, Literal, NamedTuple, Protocol, Sequence, runtime_checkable

from espl.types import Completion, Message, SamplingParams

if TYPE_CHECKING:
    from espl.agents.templating import ChatRenderer


# ---- capabilities ---------------------------------------------------------------------------------------------
@runtime_checkable
class Policy(Protocol):
    """A chat model that continues a batch of conversations.

    `generate` returns one `Completion` per conversation, in order. `tools` are OpenAI-style JSON schemas
    that the backend renders into the prompt (chat template `tools=`) when the model supports them.
    `seeds`: one sampling seed per conversation, so a conversation's reply does not depend on the batch it is
    in (None: derived from `params.seed` and the position). Token backends fill `Completion.prompt_ids/
    token_ids/logprobs`; others leave them empty. `tokens_generated` counts generated tokens, cumulative.
    A backend failure raises (`GenerationError` with the finished completions); a reply the model garbled is
    a normal completion for the env to score. `close()` frees what the policy owns (a server it started).
    """

    name: str
    tokens_generated: int

    def generate(
        self,
        conversations: Sequence[Sequence[Message]],
        params: SamplingParams,
        tools: Sequence[dict[str, Any]] | None = None,
        seeds: Sequence[int] | None = None,
    ) -> list[Completion]: ...

    def close(self) -> None: ...


@runtime_checkable
class TokenPolicy(Policy, Protocol):
    """A `Policy` that also takes prompts as token ids: what token-exact multi-turn rollouts need.

    The rollout renders the first prompt with `renderer.start`, and every later prompt as the previous
    prompt ids + the generated ids + `renderer.continuation(...)`, then calls `generate_tokens`.
    `max_context`: the model's context length in tokens (None: unknown); a row whose prompt leaves no room
    for one token finishes with `finish_reason == "context_overflow"` (the other rows are unaffected).
    `tools`: one `ToolSet` (agents/tool_grammar.py) or None per prompt, the tools a row is decoded under when
    `params.tool_grammar` is on (a backend that cannot constrain raises ValueError).
    """

    renderer: ChatRenderer
    max_context: int | None

    def generate_tokens(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        prompt_texts: Sequence[str | None] | None = None,
        seeds: Sequence[int] | None = None,  # one sampling seed per prompt (row draws independent of the batch)
        tools: Sequence[Any] | None = None,  # one ToolSet | None per prompt: decoded under params.tool_grammar
    ) -> list[Completion]: ...


class TrajectoryLogprobs(NamedTuple):
    """One micro-batch for the RL loss, every tensor shaped [rows, positions predicted] (position j predicts
    token j+1): log π_θ of each recorded token (with gradient), the sampling-time log-probs, the mask of
    policy-generated tokens, and each row's advantage on its tokens (0 past the row's end)."""

    logprobs: Any
    old_logprobs: Any
    mask: Any
    advantages: Any


@runtime_checkable
class TrainablePolicy(TokenPolicy, Protocol):
    """A `TokenPolicy` the trainer can update (HF + PEFT LoRA).

    - `trainable_parameters()`: the tensors the optimizer updates (the LoRA weights).
    - `trajectory_logprobs(trajectories, advantages, temperature)`: log π_θ (with gradient) of the recorded
      token ids of each trajectory at `temperature` (the sampler's), as a `TrajectoryLogprobs`.
    - `adapter_state()` / `load_adapter_state(state)`: the trainable tensors by parameter name (what a
      checkpoint's adapter.safetensors holds); loading refuses names the model lacks (a LoRA shape mismatch).
    - `peft_adapter()` / `load_peft_adapter(state)`: (PEFT state dict, LoRA config dict), the form PEFT saves
      and engines load (Ray workers, vLLM); None without an adapter.
    - `set_training(on)`: train mode (dropout) for the update, eval mode for generation.
    - `adapter_disabled()`: a context in which `generate` uses the frozen base model (the mutator's view).
    """

    def trainable_parameters(self) -> list[Any]: ...

    def trajectory_logprobs(self, trajectories: Sequence[Any], advantages: Sequence[float],
                            temperature: float) -> TrajectoryLogprobs: ...

    def adapter_state(self) -> dict[str, Any]: ...

    def load_adapter_state(self, state: dict[str, Any]) -> None: ...

    def peft_adapter(self) -> tuple[dict[str, Any], dict[str, Any]] | None: ...

    def load_peft_adapter(self, state: dict[str, Any]) -> None: ...

    def set_training(self, training: bool) -> None: ...

    def adapter_disabled(self) -> ContextManager[Any]: ...


@runtime_checkable
class JsonPolicy(Protocol):
    """Schema-constrained generation: one reply per conversation, valid JSON under its schema (as far as the
    backend's grammar enforces it; a row the grammar had to end early comes back as invalid text)."""

    def generate_json(self, conversations: Sequence[Sequence[Message]], params: SamplingParams,
                      schemas: Sequence[dict]) -> list[str]: ...


@runtime_checkable
class AdapterFilePolicy(Protocol):
    """An engine that loads a LoRA adapter from a PEFT directory (adapter_config.json +
    adapter_model.safetensors); every later generate call uses it (vLLM)."""

    def load_adapter(self, path: str | Path, name: str | None = None) -> None: ...


@runtime_checkable
class ModelSourcePolicy(Protocol):
    """A policy that says where its weights come from (what the leaderboard records to reproduce a run):
    {"kind": "gguf" | "local", "path": ...}, {"kind": "hub", "id": ..., "commit": ...}, {"kind": "server",
    "base_url": ... (no credentials), "model": ...}, or None when unknown (a model object passed in)."""

    def model_source(self) -> dict[str, Any] | None: ...


# ---- the spec and the factory -----------------------------------------------------------------------------------
Backend = Literal["hf", "vllm", "openai", "llamacpp"]
BACKENDS: tuple[str, ...] = ("hf", "vllm", "openai", "llamacpp")
ToolFormat = Literal["native", "hermes"]
DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")
_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?|xpu(:\d+)?)$")


@dataclass(frozen=True)
class LoraSettings:
    """A PEFT LoRA adapter on the policy (E-SPL default rank 32)."""

    r: int = 32
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora.r: must be >= 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout: must be in [0, 1), got {self.dropout}")

    def peft_config(self) -> Any:
        from peft import LoraConfig

        targets = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=targets, task_type="CAUSAL_LM")


@dataclass(frozen=True)
class PolicySpec:
    """Everything needed to build a policy; `build_policy(spec)` builds it. Frozen and picklable, so the
    same spec rebuilds the policy on a Ray worker. Validated on construction (one-line errors naming the field).

    backend: "hf" (transformers, in this process), "vllm" (in-process engine), "openai" (a server at
        `base_url`), "llamacpp" (a llama.cpp server of a GGUF model started for, and owned by, the policy).
    model: an alias (`smollm2-135m`, `qwen2.5-coder-0.5b`), a hub id or a local path; for "openai" the
        server's model name.
    device, dtype, max_batch: hf/vllm placement, weights dtype, and rows generated at once (hf).
    lora: a LoRA adapter (hf: trainable; vllm: enables adapters of at most this rank).
    adapter: a LoRA weights file (adapter.safetensors from a checkpoint) loaded into the adapter (hf; needs
        `lora` of the shape it was trained with).
    lora_init_seed: seeds torch before the LoRA adapter is created (its A matrices are random).
    base_url, api_key, tool_format, max_concurrency, timeout_s, retries: the OpenAI-compatible client
        ("openai"; "llamacpp" uses tool_format and timeout_s too).
    threads: CPU threads: llama.cpp's server threads ("llamacpp"); for hf, torch's (None: leave torch's).
    parallel, ctx_per_slot: llama.cpp server slots and tokens of context per slot.
    kv_cache: hf's decode cache: "dynamic", "static" (pre-allocated; compiled on CUDA) or "auto" (agents/hf.py).
    """

    backend: Backend = "hf"
    model: str = "smollm2-135m"
    device: str = "cpu"
    dtype: str = "auto"
    max_batch: int = 64
    lora: LoraSettings | None = None
    adapter: str | None = None
    lora_init_seed: int | None = None
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)  # a secret: kept out of logs and reprs
    tool_format: ToolFormat = "native"
    max_concurrency: int = 8
    timeout_s: float = 60.0
    retries: int = 3
    threads: int | None = None
    parallel: int = 4
    ctx_per_slot: int = 2048
    kv_cache: Literal["dynamic", "static", "auto"] = "auto"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend: must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model: a model alias, hub id or path is required, got {self.model!r}")
        if not isinstance(self.device, str) or not _DEVICE.match(self.device):
            raise ValueError(f"device: must be cpu, cuda, cuda:N or mps, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.tool_format not in ("native", "hermes"):
            raise ValueError(f"tool_format: must be native or hermes, got {self.tool_format!r}")
        if self.kv_cache not in ("dynamic", "static", "auto"):
            raise ValueError(f"kv_cache: must be dynamic, static or auto, got {self.kv_cache!r}")
        for name in ("max_batch", "max_concurrency", "parallel", "ctx_per_slot"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}: must be an integer >= 1, got {getattr(self, name)!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads: must be an integer >= 1 (or unset), got {self.threads!r}")
        if self.retries < 0:
            raise ValueError(f"retries: must be >= 0, got {self.retries}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s: must be > 0, got {self.timeout_s}")
        if self.backend == "openai":
            if not self.base_url or not str(self.base_url).startswith(("http://", "https://")):
                raise ValueError("base_url: the openai backend needs an http(s) URL like http://127.0.0.1:8080/v1, "
                                 f"got {self.base_url!r}")
        elif self.base_url:
            raise ValueError(f"base_url: only the openai backend talks to a server; drop it or use backend='openai' "
                             f"(backend is {self.backend!r})")
        if self.backend in ("openai", "llamacpp") and (self.lora is not None or self.adapter):
            raise ValueError(f"lora: the {self.backend} backend serves fixed weights; LoRA adapters need backend "
                             "'hf' (trainable) or 'vllm'")
        if self.adapter and self.backend != "hf":
            raise ValueError("adapter: loading adapter weights from a file needs backend 'hf'")
        if self.adapter and self.lora is None:
            raise ValueError("adapter: needs `lora` (the LoraSettings the adapter was trained with)")

    def with_(self, **changes: Any) -> "PolicySpec":
        """A copy with `changes` applied (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-friendly data (api_key left out)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "api_key":
                continue
            v = getattr(self, f.name)
            out[f.name] = {"r": v.r, "alpha": v.alpha, "dropout": v.dropout,
                           "target_modules": v.target_modules} if isinstance(v, LoraSettings) else v
        return out


def build_policy(spec: PolicySpec) -> Policy:
    """The policy a `PolicySpec` describes (the only constructor the trainer, eval, leaderboard and Ray use).

    Errors for bad specs are raised when the spec is made; this raises what loading raises (an unknown model
    alias: ValueError; missing files: FileNotFoundError; a missing optional backend: ImportError).
    """
    if not isinstance(spec, PolicySpec):
        raise TypeError(f"spec: must be a PolicySpec, got {type(spec).__name__}")
    if spec.backend == "hf":
        if spec.threads:
            import torch

            torch.set_num_threads(spec.threads)
        if spec.lora is not None and spec.lora_init_seed is not None:
            import torch

            torch.manual_seed(spec.lora_init_seed)  # LoRA A matrices are random: same seed, same start
        from espl.agents.hf import HFPolicy

        hf = HFPolicy(spec.model, lora=spec.lora, device=spec.device, dtype=spec.dtype, max_batch=spec.max_batch,
                      kv_cache=spec.kv_cache)
        if spec.adapter:
            from safetensors.torch import load_file

            path = Path(spec.adapter).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"adapter: no such file {path}")
            hf.load_adapter_state(load_file(str(path)))
            hf.set_training(False)
        return hf
    if spec.backend == "vllm":
        from espl.agents.vllm_policy import VLLMPolicy

        kwargs: dict[str, Any] = {"dtype": spec.dtype, "enable_lora": spec.lora is not None}
        if spec.lora is not None:
            kwargs["max_lora_rank"] = spec.lora.r
        vl = VLLMPolicy(spec.model, **kwargs)
        return vl
    if spec.backend == "openai":
        import os

        from espl.agents.openai_policy import OpenAIPolicy

        return OpenAIPolicy(str(spec.base_url), spec.model, spec.api_key or os.environ.get("OPENAI_API_KEY"),
                            max_concurrency=spec.max_concurrency, timeout_s=spec.timeout_s, retries=spec.retries,
                            tool_format=spec.tool_format)
    from espl.agents.llamacpp import llamacpp_policy

    return llamacpp_policy(spec.model, threads=spec.threads or 1, parallel=spec.parallel,
                           ctx_per_slot=spec.ctx_per_slot, tool_format=spec.tool_format)
