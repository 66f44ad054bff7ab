"""`HFPolicy`: a transformers model (optionally with a PEFT LoRA adapter) as a trainable `Policy`.

Generation is a small decode loop of our own over the model's forward pass, rather than `model.generate`,
because a rollout needs four things `generate` does not give together:

- **Shared-prefix KV cache.** Rollouts of one step share their system prompt (often the problem too). The
  prompts of a batch are grouped by common token prefix; each distinct prefix is encoded once and its KV
  cache copied to the rows that share it, then only the per-row suffixes are encoded. A cost estimate
  (tokens encoded, padding included) decides per batch whether grouping pays (`prefix_sharing`); on
  accelerators it is off unless forced (prefill is cheap there: measured 0.94x on an H200).
- **Sampling-time log-probs** of every sampled token (see `Completion.logprobs` below).
- **Finished rows leave the batch**: a row that hit end-of-turn is dropped from the KV cache, so the
  batch never keeps decoding padding for its longest member.
- **Stop strings** and an exact record of which ids were sampled.

The KV cache is `kv_cache="dynamic"` (grown each step), `"static"` (transformers' `StaticCache`, pre-allocated
to the chunk's length: what lets the decode step be compiled, `compile_decode`) or `"auto"` (dynamic until the
static path is measured on a GPU; see `_static_kv` and docs/performance.md). Both give the same tokens and log-probs
for the same seeds, with shared prefixes, finished rows leaving and multi-turn prompts alike.

`logprobs[i]` is log softmax(logits / T) at the sampled token: the distribution sampled from, before top-p
truncation (T = 1 when greedy, i.e. the model's own log-prob). Prompts are left-padded; positions come
from the attention mask, so padding never shifts a row's positions.

`HFPolicy` has every capability of agents/policy.py: `TokenPolicy`, `TrainablePolicy` (the LoRA adapter
`lora=LoraSettings(...)` is what the trainer trains: `trainable_parameters()`, `trajectory_logprobs(...)`,
`adapter_state()`; the mutator asks for the frozen base model with `with policy.adapter_disabled(): ...`) and
`JsonPolicy` (`generate_json`: grammar-constrained JSON through xgrammar, agents/hf_constrained.py).
`.model` is the torch module (PEFT-wrapped when there is an adapter); only this backend knows transformers.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Sequence

from espl.agents.errors import AdapterMismatch
from espl.agents.models import DEFAULT_MODEL, ModelSpec, load_model, resolve_model
from espl.agents.policy import LoraSettings, PolicySpec, TrajectoryLogprobs
from espl.agents.templating import ChatRenderer
from espl.agents.tool_grammar import HFToolGrammar, ToolSet, next_reply_mode, trajectory_grammar
from espl.seeds import mix_seed  # its one home (espl/seeds.py)
from espl.types import Completion, Message, SamplingParams, Trajectory

log = logging.getLogger(__name__)
# a CPU decode chunk encodes at most this many times its prompts' tokens, padding included (`decode_chunks`)
PAD_SLACK = 1.5

KVCache = Literal["dynamic", "static", "auto"]
KV_CACHES: tuple[str, ...] = ("dynamic", "static", "auto")


@dataclass
class GenerationStats:
    """Counters of the last `generate_tokens` call (read by benchmarks and `espl eval`)."""

    prompt_tokens: int = 0
    encoded_tokens: int = 0  # tokens actually run through the model in prefill (after prefix sharing)
    generated_tokens: int = 0
    seconds: float = 0.0
    shared_prefix: bool = False


class HFPolicy:
    """A transformers chat model as a `Policy` (and `TokenPolicy`), batched, with a shared-prefix KV cache.

    `model` is an alias (`smollm2-135m`, `qwen2.5-coder-0.5b`), a hub id, a local path, or a loaded
    `PreTrainedModel` (then pass `tokenizer=`).
    """

    def __init__(
        self,
        model: str | ModelSpec | Any = DEFAULT_MODEL,
        *,
        tokenizer: Any = None,
        lora: LoraSettings | None = None,
        device: str = "cpu",
        dtype: Any = "auto",
        max_batch: int = 64,
        prefix_sharing: bool | None = None,
        min_shared_prefix: int = 16,
        logprob_chunk: int | None = 1024,
        activation_checkpointing: bool = True,
        checkpoint_min_tokens: int = 1024,
        kv_cache: KVCache = "auto",
        compile_decode: bool | None = None,
    ):
        import torch

        if isinstance(model, (str, ModelSpec)) or model is None:
            spec = model if isinstance(model, ModelSpec) else resolve_model(model)
            self.spec: ModelSpec | None = spec
            base, tok = load_model(spec, dtype=dtype, device=device)
            self.name = spec.name
        else:
            if tokenizer is None:
                raise ValueError("tokenizer: required when `model` is a loaded model object")
            base, tok, self.spec = model, tokenizer, None
            self.name = getattr(getattr(model, "config", None), "name_or_path", None) or type(model).__name__
        if tokenizer is not None:
            tok = tokenizer
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        if max_batch < 1:
            raise ValueError(f"max_batch: must be >= 1, got {max_batch}")
        if kv_cache not in KV_CACHES:
            raise ValueError(f"kv_cache: must be one of {', '.join(KV_CACHES)}, got {kv_cache!r}")
        self.tokenizer = tok
        self.device = torch.device(device)
        self.max_batch = max_batch
        self.prefix_sharing = prefix_sharing  # None: decide per batch by cost; True/False: force
        self.min_shared_prefix = min_shared_prefix
        self.lora = lora
        if lora is not None:
            from peft import get_peft_model

            self.model = get_peft_model(base, lora.peft_config())
        else:
            self.model = base
        self.renderer = ChatRenderer(tok)
        self.stop_ids = self._stop_ids()
        self.last_stats = GenerationStats()
        self.tokens_generated = 0  # cumulative, across calls
        self.max_context: int | None = int(getattr(base.config, "max_position_embeddings", 0) or 0) or None
        self._json: Any = None  # XGrammarJson, built on the first generate_json call
        self._tool_grammar: HFToolGrammar | None = None  # built on the first constrained tool call
        self.grammar_failures = 0  # sampled tokens a tool grammar rejected (should stay 0)
        # trajectory_logprobs: positions per LM-head chunk (None: all at once); see there
        self.logprob_chunk: int | None = logprob_chunk
        # the update's forward keeps only each decoder layer's input and recomputes the layer in backward: a
        # 3,300-token BFCL episode of Qwen2.5-0.5B otherwise kept ~4.8 MB a token (a 4-row micro-batch over
        # 24 GiB: the OOM that stopped tool RL, docs/performance.md); generation (eval mode) is unaffected.
        # Only a micro-batch of at least `checkpoint_min_tokens` padded tokens (rows x longest) is checkpointed:
        # a smaller one keeps its activations (at most that many tokens' worth, ~5 GB for the 0.5B), since the
        # recompute costs time there and saves little (64-token SmolLM2 episodes: docs/performance.md)
        if checkpoint_min_tokens < 0:
            raise ValueError(f"checkpoint_min_tokens: must be >= 0, got {checkpoint_min_tokens}")
        self.activation_checkpointing = activation_checkpointing
        self.checkpoint_min_tokens = checkpoint_min_tokens
        self._checkpointing_on = False
        self._checkpoint_layers: list[Any] = []  # the decoder layers whose checkpointing a micro-batch switches
        # the decode loop's KV cache: "dynamic" (grown by concatenation), "static" (pre-allocated to the chunk's
        # length, written in place), "auto" (see `_static_kv`); `compile_decode` wraps the decode step's forward
        # in torch.compile (static cache only; None: on CUDA yes, on CPU no, see `_compiled`)
        self.kv_cache: KVCache = kv_cache
        self.compile_decode = compile_decode
        self._compiled_forward: Any = None  # torch.compile of the model's forward, built on first use
        self._compile_failed = False
        # transformers renamed forward's `past_key_values` to `cache` (the old name is deprecated): the
        # installed version's name, read once from the model class (a transformers API, not a policy's)
        import inspect

        forward_params = inspect.signature(type(self._lm).forward).parameters
        self._cache_kw = "cache" if "cache" in forward_params else "past_key_values"

    # ---- adapter ----------------------------------------------------------------------------------------
    @property
    def _lm(self) -> Any:
        # PEFT injects the LoRA layers into the base model in place: calling it runs the adapter (if enabled)
        return self.model.get_base_model() if self.lora is not None else self.model

    def set_adapter_enabled(self, enabled: bool) -> None:
        """Turn the LoRA adapter on or off (no-op without one)."""
        if self.lora is None:
            return
        if enabled:
            self.model.enable_adapter_layers()
        else:
            self.model.disable_adapter_layers()

    @contextlib.contextmanager
    def adapter_disabled(self) -> Iterator["HFPolicy"]:
        """Generate with the frozen base model inside this block (the mutator's view)."""
        if self.lora is None:
            yield self
            return
        with self.model.disable_adapter():
            yield self

    # ---- TrainablePolicy ---------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[Any]:
        """The tensors the optimizer updates (the LoRA weights; empty without an adapter)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def adapter_state(self) -> dict[str, Any]:
        """The trainable tensors by parameter name, detached CPU copies (a checkpoint's adapter.safetensors)."""
        return {n: p.detach().cpu().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def load_adapter_state(self, state: dict[str, Any]) -> None:
        """Copy tensors saved by `adapter_state` into the model; names it lacks are refused (ValueError) before
        anything is copied (an adapter trained with another model or LoRA shape)."""
        import torch

        named = dict(self.model.named_parameters())
        unknown = sorted(set(state) - set(named))
        if unknown:
            raise AdapterMismatch(f"adapter: {len(unknown)} weights do not fit {self.name} with "
                             f"{'no LoRA' if self.lora is None else f'LoRA r={self.lora.r}'} (unknown parameters, "
                             f"e.g. {unknown[0]}); build the policy with the LoRA settings the adapter was trained with")
        bad = [n for n, v in state.items() if tuple(v.shape) != tuple(named[n].shape)]
        if bad:
            raise AdapterMismatch(f"adapter: {bad[0]} has shape {tuple(state[bad[0]].shape)}, the model's is "
                             f"{tuple(named[bad[0]].shape)}; the LoRA rank differs from the adapter's")
        with torch.no_grad():
            for name, value in state.items():
                named[name].copy_(value)

    def peft_adapter(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(PEFT state dict, LoRA config dict) of the adapter, as PEFT saves it; None without one."""
        if self.lora is None:
            return None
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(self.model), next(iter(self.model.peft_config.values())).to_dict()

    def load_peft_adapter(self, state: dict[str, Any]) -> None:
        """Load a PEFT state dict (from `peft_adapter`) into this policy's adapter; every LoRA weight must be there."""
        if self.lora is None:
            raise AdapterMismatch("adapter: this policy has no LoRA adapter; build it with lora=LoraSettings(...) "
                             "matching the adapter's")
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.model, state)
        missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
        if missing:
            raise AdapterMismatch(f"adapter: {len(missing)} LoRA weights were not in the state given (e.g. {missing[0]}); "
                             "the LoraSettings must match the adapter's")

    def set_training(self, training: bool) -> None:
        """Train mode (dropout on, and activation checkpointing when `activation_checkpointing`) for an update,
        eval mode for generation."""
        if training and self.activation_checkpointing and not self._checkpointing_on:
            # non-reentrant: no input needs requires_grad (LoRA), and dropout's RNG state is replayed exactly.
            # Enabled once (enabling again would add another input hook); `_checkpoint_for` then switches the
            # layers' flag per micro-batch
            from transformers.modeling_layers import GradientCheckpointingLayer

            self._lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self._checkpoint_layers = [m for m in self._lm.modules() if isinstance(m, GradientCheckpointingLayer)]
            self._checkpointing_on = True
        self.model.train(training)

    def _checkpoint_for(self, padded_tokens: int) -> None:
        """Switches the decoder layers' activation checkpointing for a micro-batch of `padded_tokens`: on when
        `activation_checkpointing` and at least `checkpoint_min_tokens`."""
        on = self.activation_checkpointing and padded_tokens >= self.checkpoint_min_tokens
        for layer in self._checkpoint_layers:
            layer.gradient_checkpointing = on

    def trajectory_logprobs(self, trajectories: Sequence[Trajectory], advantages: Sequence[float],
                            temperature: float) -> TrajectoryLogprobs:
        """The RL loss's inputs for one micro-batch: per-token log π_θ (with gradient) of each trajectory's
        recorded token ids at `temperature`, the sampling-time log-probs, the generated-token mask and the
        advantages, all shaped [batch, positions predicted].

        Sequences are right-padded; position j predicts token j+1. Logits are computed only from the position
        before the first generated token on: the prompt's positions carry no loss, so the LM head (a fifth of
        SmolLM2's FLOPs) skips them. Over `logprob_chunk` positions (default 1024) the LM head and log-softmax
        run chunk by chunk under activation checkpointing: a 15,000-token reply (the reference's budget) at
        SmolLM2's 49,152-token vocabulary would otherwise be 2.9 GB of float32 logits per row, twice over with
        the softmax kept for backward. Tokens sampled under a tool grammar are normalised over the tokens the
        grammar allowed (`Trajectory.tool_grammar`, masks rebuilt by replaying the grammar).
        """
        import torch

        pad = self.tokenizer.pad_token_id or 0
        width = max(len(t.token_ids) for t in trajectories)
        n = len(trajectories)
        ids = torch.full((n, width), pad, dtype=torch.long)
        attn = torch.zeros((n, width), dtype=torch.long)
        old, mask, adv = torch.zeros((n, width)), torch.zeros((n, width)), torch.zeros((n, width))
        for j, (t, a) in enumerate(zip(trajectories, advantages)):
            L = len(t.token_ids)
            ids[j, :L] = torch.tensor(t.token_ids)
            attn[j, :L] = 1
            old[j, :L] = torch.tensor(t.logprobs, dtype=torch.float32)
            mask[j, :L] = torch.tensor(t.mask, dtype=torch.float32)
            adv[j, :L] = a
        start = max(int(mask.argmax(dim=1).min()) - 1, 0)
        device = next(self.model.parameters()).device
        ids, attn = ids.to(device), attn.to(device)
        targets = ids[:, start + 1:]
        constrained = self._grammar_masks(trajectories, start)
        if constrained is not None:
            constrained = tuple(x.to(device) for x in constrained)
        positions = width - start - 1
        if self.model.training:
            self._checkpoint_for(n * width)
        if self.logprob_chunk is None or positions <= self.logprob_chunk:
            logits = self.model(input_ids=ids, attention_mask=attn, logits_to_keep=width - start,
                                use_cache=False).logits[:, :-1]
            lp = _token_logprobs(logits, targets, temperature, constrained, 0)
        else:
            # long replies: the LM head and log-softmax run over chunks of positions, each recomputed in the
            # backward pass (checkpoint), so [rows, positions, vocab] float32 logits never exist at once
            from torch.utils.checkpoint import checkpoint

            hidden = self._lm.get_decoder()(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state[:, start:-1]
            head = self._lm.get_output_embeddings()

            def chunk_lp(h: Any, tgt: Any, offset: int) -> Any:
                return _token_logprobs(head(h), tgt, temperature, constrained, offset)

            lp = torch.cat([checkpoint(chunk_lp, hidden[:, c:c + self.logprob_chunk],
                                       targets[:, c:c + self.logprob_chunk], c, use_reentrant=False)
                            for c in range(0, positions, self.logprob_chunk)], dim=1)
        sl = slice(start + 1, None)
        return TrajectoryLogprobs(lp, old[:, sl].to(device), mask[:, sl].to(device), adv[:, sl].to(device))

    def tool_grammar_engine(self) -> HFToolGrammar:
        """The xgrammar matchers of tool-call grammars over this tokenizer (built once; needs xgrammar)."""
        if self._tool_grammar is None:
            self._tool_grammar = HFToolGrammar(self.tokenizer, int(self._lm.config.vocab_size), sorted(self.stop_ids))
        return self._tool_grammar

    def _grammar_masks(self, trajectories: Sequence[Trajectory], start: int) -> tuple[Any, Any, Any] | None:
        """(row index, logit index, additive mask [M, vocab]: 0 allowed, -inf not) of every position whose next
        token was sampled under a tool grammar, rebuilt by replaying the grammar over the recorded tokens.
        Logit index j predicts token start + 1 + j (see trajectory_logprobs); None when nothing was constrained."""
        import torch

        records = [(j, rec) for j, t in enumerate(trajectories) if (rec := trajectory_grammar(t)) is not None]
        if not records:
            return None
        g = self.tool_grammar_engine()
        rows: list[int] = []
        pos: list[int] = []
        masks = []
        for j, rec in records:
            ids = trajectories[j].token_ids
            for span in rec["spans"]:
                s, e = span[0], span[1]
                mode = span[2] if len(span) > 2 else rec["mode"]  # each reply's own mode (call_then_answer)
                bits, n = g.replay(ids[s:e], rec["tools"], mode, bool(rec.get("parallel")))
                if n:
                    rows.extend([j] * n)
                    pos.extend(range(s - 1 - start, s - 1 - start + n))
                    masks.append(bits)
        if not rows:
            return None
        bitmask = torch.cat(masks)
        add = torch.zeros((len(rows), g.vocab_size), dtype=torch.float32)
        g.apply(add, bitmask)
        return torch.tensor(rows), torch.tensor(pos), add

    # ---- JsonPolicy ----------------------------------------------------------------------------------------
    def generate_json(self, conversations: Sequence[Sequence[Message]], params: SamplingParams,
                      schemas: Sequence[dict]) -> list[str]:
        """One reply per conversation decoded under its JSON schema (xgrammar; agents/hf_constrained.py), with
        the weights as they are (inside `adapter_disabled()`: the base model). ImportError without xgrammar."""
        if self._json is None:
            from espl.agents.hf_constrained import XGrammarJson

            self._json = XGrammarJson(self.model, self.tokenizer)
        if not conversations:
            return []
        return self._json(conversations, params, schemas)

    @property
    def json_failures(self) -> int:
        """Rows of `generate_json` ended because a sampled token broke the grammar (counted as invalid)."""
        return 0 if self._json is None else self._json.failures

    # ---- identity (leaderboard records, Ray workers) -------------------------------------------------------
    def model_source(self) -> dict[str, Any] | None:
        """Where the weights come from: the GGUF file, a local folder, or a hub id at its commit."""
        source = self.spec.local_source() if self.spec is not None else None
        if source is not None:
            return source
        config = getattr(self.model, "config", None)
        commit = getattr(config, "_commit_hash", None)
        return {"kind": "hub", "id": getattr(config, "name_or_path", None), "commit": commit} if commit else None

    def policy_spec(self, device: str | None = None) -> PolicySpec:
        """The `PolicySpec` that rebuilds this policy elsewhere (adapter weights travel separately)."""
        if self.spec is None:
            raise ValueError("policy: an HFPolicy built from a model object cannot be rebuilt on a worker; "
                             "pass RayRollout(policy_factory=WorkerPolicy(PolicySpec(model=NAME, ...))) instead")
        import torch

        dtype = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(
            next(self.model.parameters()).dtype, "auto")
        return PolicySpec(backend="hf", model=self.spec.name, lora=self.lora, dtype=dtype, max_batch=self.max_batch,
                          device=device or str(self.device))

    # ---- Policy ------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Nothing to stop (the weights go with the object)."""

    def generate(
        self,
        conversations: Sequence[Sequence[Message]],
        params: SamplingParams,
        tools: Sequence[dict[str, Any]] | None = None,
        seeds: Sequence[int] | None = None,
    ) -> list[Completion]:
        rendered = [self.renderer.start(conv, tools) for conv in conversations]
        row_tools = ([ToolSet(list(tools), params.parallel_tool_calls, next_reply_mode(params.tool_grammar, conv))
                      for conv in conversations] if tools and params.tool_grammar != "off" else None)
        return self.generate_tokens([r.ids for r in rendered], params, [r.text for r in rendered], seeds=seeds,
                                    tools=row_tools)

    def generate_tokens(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        prompt_texts: Sequence[str | None] | None = None,
        seeds: Sequence[int] | None = None,
        tools: Sequence[ToolSet | None] | None = None,
    ) -> list[Completion]:
        """Continue each prompt (token ids). One `Completion` per prompt, in order.

        `seeds`: one sampling seed per prompt. Each row draws its random numbers from its own generator, so a
        row's tokens depend on its seed alone, not on which other prompts share the batch (what makes
        rollouts split across workers reproduce a local run). Without `seeds`, row i's seed is derived from
        `params.seed` and i.

        `tools`: one `ToolSet` (or None) per prompt. With `params.tool_grammar` not "off", a row with tools is
        decoded under the tool-call grammar of agents/tool_grammar.py in its ToolSet's mode, else
        `params.tool_grammar`'s (its logits masked to what the grammar allows before sampling; its log-probs those
        of the masked, renormalised distribution). "call_then_answer" needs each row's mode in its ToolSet.
        """
        import torch

        if prompt_texts is not None and len(prompt_texts) != len(prompts):
            raise ValueError("prompt_texts: must have one entry per prompt")
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError("seeds: must have one entry per prompt")
        if tools is not None and len(tools) != len(prompts):
            raise ValueError("tools: must have one entry (a ToolSet or None) per prompt")
        row_tools: list[ToolSet | None] = (list(tools) if tools is not None and params.tool_grammar != "off"
                                           else [None] * len(prompts))
        stats = GenerationStats()
        t0 = time.perf_counter()
        if seeds is None:
            base = params.seed if params.seed is not None else int(torch.randint(2**62, ()).item())
            seeds = [mix_seed(base, i) for i in range(len(prompts))]
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        out: list[Completion]
        was_training = self._lm.training
        self._lm.eval()
        try:
            fits = [i for i, p in enumerate(prompts) if self._room(len(p)) >= 1]
            done: dict[int, Completion] = {
                i: Completion({"role": "assistant", "content": ""}, "context_overflow", tuple(int(t) for t in p))
                for i, p in enumerate(prompts) if self._room(len(p)) < 1}
            if done:
                log.warning("%d of %d prompts fill the model's context (%s tokens): no reply generated for them "
                            "(finish_reason context_overflow); the others are unaffected", len(done), len(prompts),
                            self.max_context)
            for rows in self._chunks(fits, [len(p) for p in prompts]):
                chunk = [tuple(int(t) for t in prompts[i]) for i in rows]
                done.update(zip(rows, self._generate_chunk(chunk, params, [gens[i] for i in rows], stats,
                                                           [row_tools[i] for i in rows])))
            out = [done[i] for i in range(len(prompts))]
        finally:
            if was_training:
                self._lm.train()
        stats.seconds = time.perf_counter() - t0
        self.last_stats = stats
        self.tokens_generated += stats.generated_tokens
        if prompt_texts is not None:
            out = [Completion(c.message, c.finish_reason, c.prompt_ids, c.token_ids, c.logprobs, txt)
                   for c, txt in zip(out, prompt_texts)]
        return out

    # ---- the decode loop ---------------------------------------------------------------------------------
    def _chunks(self, rows: list[int], lengths: Sequence[int]) -> list[list[int]]:
        """This policy's decode chunks of these prompt indices (`decode_chunks`; the padding cap on CPU only: a
        GPU is launch-bound in decoding, so fewer, wider chunks win there)."""
        return decode_chunks(rows, lengths, self.max_batch, cap_padding=self.device.type == "cpu")

    def _room(self, prompt_len: int) -> int:
        """Tokens a prompt of this length leaves in the model's context (unbounded: a large number)."""
        return self.max_context - prompt_len if self.max_context else 1 << 62

    def _stop_ids(self) -> frozenset[int]:
        ids = set()
        eos = getattr(getattr(self._lm, "generation_config", None), "eos_token_id", None)
        for x in (eos if isinstance(eos, (list, tuple)) else [eos]):
            if x is not None:
                ids.add(int(x))
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        if self.renderer.eot_id is not None:
            ids.add(int(self.renderer.eot_id))
        return frozenset(ids)

    def _plan_prefixes(self, prompts: list[tuple[int, ...]]) -> tuple[list[tuple[int, ...]], list[int], list[int]] | None:
        """Group prompts by shared prefix: (distinct prefixes, group of each row, prefix length of each row).

        None when sharing would not save work (estimated by tokens encoded, padding included).
        """
        if self.prefix_sharing is False or len(prompts) < 2:
            return None
        if self.prefix_sharing is None and self.device.type != "cpu":
            # measured on an H200 (benchmarks/rollout.py, batch 64): prefill is cheap there and the extra
            # prefix pass + cache copy made rollouts 6 % slower; on CPU sharing made them 1.35x faster
            return None
        order = sorted(range(len(prompts)), key=lambda i: prompts[i])
        groups: list[list[int]] = []
        lcp = 0
        for i in order:
            if groups:
                ref = prompts[groups[-1][0]]
                cand = _common_prefix(ref, prompts[i], lcp if len(groups[-1]) > 1 else min(len(ref), len(prompts[i])))
                if cand >= self.min_shared_prefix:
                    groups[-1].append(i)
                    lcp = cand
                    continue
            groups.append([i])
            lcp = len(prompts[i])
        prefixes, row_group, row_plen = [], [0] * len(prompts), [0] * len(prompts)
        for g, members in enumerate(groups):
            plen = min(len(prompts[m]) for m in members) - 1  # each row keeps >= 1 token to encode
            if len(members) > 1:
                plen = min(plen, _common_prefix_all([prompts[m] for m in members]))
            prefixes.append(prompts[members[0]][:plen])
            for m in members:
                row_group[m], row_plen[m] = g, plen
        plain_cost = len(prompts) * max(len(p) for p in prompts)
        shared_cost = len(prefixes) * max(len(p) for p in prefixes) + len(prompts) * max(
            len(p) - pl for p, pl in zip(prompts, row_plen))
        if self.prefix_sharing is None and shared_cost >= 0.9 * plain_cost:
            return None
        return prefixes, row_group, row_plen

    def _static_kv(self) -> bool:
        """Whether the decode loop pre-allocates its KV cache (`kv_cache`; "auto" decides by device).

        "auto" is dynamic on every device for now. On CUDA eager decoding is launch-bound (14-15 ms a step for
        Qwen2.5-0.5B on an H200 at any batch) and a static cache is what lets the step be compiled into CUDA
        graphs (2.6-5x in HF `generate`, docs/performance.md), but this decode loop's static path has not run on
        a GPU yet: `kv_cache="static"` opts in there, and `benchmarks/gpu_bench.py`'s espl_hfpolicy_static row
        is the measurement that should make it the CUDA default. On CPU: measured with SmolLM2-135M on a 2-core CPU
        (docs/performance.md, "CPU") the eager static cache was 0.84-1.01x of the dynamic one at batch 1/8/32
        (attention runs over the whole pre-allocated length every step), and compiling it gave 1.21x / 1.11x /
        0.92x per step but cost 50-150 s of compiling per batch size, more than a rollout of a few steps saves.
        """
        return self.kv_cache == "static"  # "auto": dynamic, see above

    def _compiled(self) -> bool:
        """Whether the static decode step runs through torch.compile (`compile_decode`; None: on CUDA only, where
        CUDA graphs remove the launch overhead; on CPU compiling costs minutes and did not pay, see _static_kv)."""
        if self._compile_failed:
            return False
        return self.device.type == "cuda" if self.compile_decode is None else bool(self.compile_decode)

    def _forward(self, ids: Any, mask: Any, positions: Any, cache: Any, compiled: bool = False) -> Any:
        kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                      **{self._cache_kw: cache})
        if compiled:
            import torch

            if self._compiled_forward is None:
                # one token per row, shapes fixed for the chunk (full-width mask, rows never leave): one graph
                # per batch size; "reduce-overhead" = CUDA graphs on CUDA (what HF generate's static path uses)
                mode = "reduce-overhead" if self.device.type == "cuda" else None
                self._compiled_forward = torch.compile(self._lm.forward, mode=mode, fullgraph=False, dynamic=False)
            try:
                # clone: a CUDA graph's output buffer is overwritten by its next replay
                return self._compiled_forward(**kwargs).logits[:, -1, :].float().clone()
            except Exception as e:  # a compile failure must not stop a rollout: the eager step computes the same
                self._compile_failed = True
                log.warning("torch.compile of the decode step failed (%s: %s); decoding eagerly from now on",
                            type(e).__name__, str(e).splitlines()[0] if str(e) else "")
                raise _CompileFailed() from e
        out = self._lm(**kwargs)
        return out.logits[:, -1, :].float()

    def _generate_chunk(self, prompts: list[tuple[int, ...]], params: SamplingParams, gens: list[Any],
                        stats: GenerationStats, row_tools: list[ToolSet | None]) -> list[Completion]:
        try:
            return self._decode(prompts, params, gens, stats, row_tools, self._static_kv(),
                                self._static_kv() and self._compiled())
        except _CompileFailed:
            # nothing of this chunk was returned: decode it again eagerly, from fresh generator states
            for g, s in zip(gens, [int(g.initial_seed()) for g in gens]):
                g.manual_seed(s)
            return self._decode(prompts, params, gens, stats, row_tools, True, False)

    def _decode(self, prompts: list[tuple[int, ...]], params: SamplingParams, gens: list[Any],
                stats: GenerationStats, row_tools: list[ToolSet | None], static: bool,
                compiled: bool) -> list[Completion]:
        """The decode loop of one chunk.

        `static`: the KV cache is a transformers `StaticCache` pre-allocated to the chunk's final length (prompt
        width + budget) and the attention mask is full-width from the start (future positions 0; HF pads a shorter
        mask with zeros the same way), so a step's shapes do not grow. Finished rows: eagerly they are dropped
        from the cache by index_select on the batch dim, as with the dynamic cache (on CPU a row's compute is the
        cost, so decoding finished rows would be waste); under `compiled` they stay in the batch, fed padding,
        and their outputs are ignored: a shrinking batch would make a new graph (a recompile) for each size,
        while on a launch-bound GPU a finished row costs next to nothing. Both give every live row exactly the
        inputs it would have alone: rows never attend to one another.
        """
        import torch
        from transformers import DynamicCache, StaticCache

        dev, pad = self.device, int(self.tokenizer.pad_token_id)
        n = len(prompts)
        if any(len(p) == 0 for p in prompts):
            raise ValueError("prompts: a prompt has no tokens")
        # each row's own budget: the reply limit, or what its prompt leaves of the context (>= 1: see caller)
        row_budget = [min(params.max_new_tokens, self._room(len(p))) for p in prompts]
        budget = max(row_budget)
        stats.prompt_tokens += sum(len(p) for p in prompts)

        plan = self._plan_prefixes(prompts)
        if plan is None:
            width = max(len(p) for p in prompts)
        else:
            width = max(len(p) for p in plan[0]) + max(len(p) - pl for p, pl in zip(prompts, plan[2]))
        total = width + budget  # the mask's final width: prompt columns + one per decode step (the last unused)
        if static:  # rounded up so chunks of other prompt widths reuse a compiled step's shapes (no recompile)
            total = -(-total // 128) * 128
        cache: Any = StaticCache(config=self._lm.config, max_cache_len=total) if static else DynamicCache(
            config=self._lm.config)

        with torch.no_grad():
            logits, mask = self._prefill(prompts, plan, cache, static, stats)
            next_pos = mask.sum(-1)  # the position of each row's next token
            col = mask.shape[1]  # the mask column of the next token
            if static:  # full width from the start: a step's shapes stay the same
                mask = torch.cat([mask, torch.zeros((n, total - col), dtype=mask.dtype, device=dev)], dim=1)

            alive = list(range(n))  # row i of the live batch is prompt alive[i]
            slots: list[int] = list(range(n))  # ... and row slots[i] of the cache (differ only when compiled)
            gen_ids: list[list[int]] = [[] for _ in range(n)]
            gen_lps: list[list[float]] = [[] for _ in range(n)]
            finish: list[str] = ["length"] * n
            stop_texts: list[str | None] = [None] * n
            grammars = _RowGrammars(self.tool_grammar_engine() if any(row_tools) else None, row_tools,
                                    params.tool_grammar)
            for step in range(budget):
                grammars.mask(logits, alive)
                tok, lp = _sample(logits, params, [gens[i] for i in alive])
                keep = []
                for row, (i, t, lp_i) in enumerate(zip(alive, tok.tolist(), lp.tolist())):
                    gen_ids[i].append(t)
                    gen_lps[i].append(lp_i)
                    if not grammars.accept(i, t):
                        self.grammar_failures += 1
                    done = self._row_done(gen_ids[i], params, row_budget[i])
                    if done is None:
                        keep.append(row)
                    else:
                        finish[i], stop_texts[i] = done
                if not keep or step == budget - 1:
                    break
                tok_t = tok.to(dev)
                if len(keep) < len(alive):
                    kt = torch.tensor(keep, device=dev)
                    alive, tok_t = [alive[r] for r in keep], tok_t[kt]
                    if compiled:  # the row stays in the batch (fixed shapes), its output unused
                        slots = [slots[r] for r in keep]
                    else:
                        _select_rows(cache, kt, static)
                        mask, next_pos = mask[kt], next_pos[kt]
                        slots = list(range(len(alive)))
                if compiled and len(alive) < n:
                    full = torch.full((n,), pad, dtype=tok_t.dtype, device=dev)
                    slot_t = torch.tensor(slots, device=dev)
                    full[slot_t] = tok_t
                    tok_t = full
                if static:
                    mask[:, col] = 1
                else:
                    mask = torch.cat([mask, torch.ones((len(alive), 1), dtype=mask.dtype, device=dev)], dim=1)
                col += 1
                logits = self._forward(tok_t[:, None], mask, next_pos[:, None], cache, compiled)
                if compiled and len(alive) < n:
                    logits = logits[slot_t]
                next_pos = next_pos + 1
        stats.generated_tokens += sum(len(g) for g in gen_ids)
        return [self._completion(p, g, lps, f, s) for p, g, lps, f, s in zip(prompts, gen_ids, gen_lps, finish, stop_texts)]

    def _prefill(self, prompts: list[tuple[int, ...]], plan: Any, cache: Any, static: bool,
                 stats: GenerationStats) -> tuple[Any, Any]:
        """Encodes the chunk's prompts into `cache`: with a shared-prefix `plan` (`_plan_prefixes`), each distinct
        prefix once, then the cache rows are repeated per prompt and only the suffixes are encoded. Returns the
        logits of each row's next token and the attention mask so far (left-padded, prompt columns only)."""
        import torch

        dev, pad = self.device, int(self.tokenizer.pad_token_id)
        if plan is None:
            suffixes, prefix_mask = prompts, None
        else:
            prefixes, row_group, row_plen = plan
            stats.shared_prefix = True
            ids, pmask = _left_pad(prefixes, pad, dev)
            pos = (pmask.cumsum(-1) - 1).clamp(min=0)
            self._forward(ids, pmask, pos, cache)
            stats.encoded_tokens += int(pmask.sum())
            _select_rows(cache, torch.tensor(row_group, device=dev), static)
            prefix_mask = pmask[torch.tensor(row_group, device=dev)]
            suffixes = [p[pl:] for p, pl in zip(prompts, row_plen)]
        ids, smask = _left_pad(suffixes, pad, dev)
        mask = smask if prefix_mask is None else torch.cat([prefix_mask, smask], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1]:]
        stats.encoded_tokens += int(smask.sum())
        return self._forward(ids, mask, positions, cache), mask

    def _row_done(self, gen: list[int], params: SamplingParams, budget: int) -> tuple[str, str | None] | None:
        """Why a row stops after its newest token: ("stop", None) at a stop token, ("stop", the string) at a stop
        string, ("length", None) when its own budget is spent; None while it goes on."""
        if gen[-1] in self.stop_ids:
            return "stop", None
        if params.stop:
            hit = self._stop_string_hit(gen, params.stop)
            if hit is not None:
                return "stop", hit
        if len(gen) >= budget:
            return "length", None
        return None

    def _stop_string_hit(self, ids: list[int], stops: Sequence[str]) -> str | None:
        longest = max(len(s) for s in stops)
        tail = self.tokenizer.decode(ids[-(longest + 8):], skip_special_tokens=False)
        for s in stops:
            if s in tail:
                return s
        return None

    def _completion(self, prompt: tuple[int, ...], ids: list[int], lps: list[float], finish: str,
                    stop_text: str | None) -> Completion:
        body = ids[:-1] if ids and ids[-1] in self.stop_ids else ids
        text = self.tokenizer.decode(body, skip_special_tokens=False)
        if stop_text is not None:
            text = text[: text.find(stop_text)] if stop_text in text else text
        return Completion(
            message={"role": "assistant", "content": text},
            finish_reason=finish,  # type: ignore[arg-type]
            prompt_ids=prompt,
            token_ids=tuple(ids),
            logprobs=tuple(lps),
        )


def decode_chunks(rows: Sequence[int], lengths: Sequence[int], max_batch: int, cap_padding: bool) -> list[list[int]]:
    """Decode chunks of the prompt indices `rows` (`lengths[i]`: prompt i's tokens): at most `max_batch` rows
    each, shortest prompts first (a stable sort, so the identical prompts of a group stay together for prefix
    sharing). With `cap_padding` a chunk also ends before the left padding of its prefill would make it encode
    more than PAD_SLACK times its prompts' tokens: on CPU padding is computed like any token, and 200 BFCL
    prompts (live_simple + multiple + live_multiple, 250 to 3,200 tokens) in arrival-order chunks of 64
    encoded 3.78x their tokens (1.36x with the cap). Each row's tokens depend on its own seed, not on its
    chunk."""
    chunks: list[list[int]] = []
    total = 0
    for i in sorted(rows, key=lambda i: lengths[i]):
        c = chunks[-1] if chunks else None
        if (c is None or len(c) >= max_batch
                or (cap_padding and (len(c) + 1) * lengths[i] > PAD_SLACK * (total + lengths[i]))):
            chunks.append([i])
            total = lengths[i]
        else:
            c.append(i)
            total += lengths[i]
    return chunks


class _RowGrammars:
    """The tool-call grammar of each row of one decode chunk (agents/tool_grammar.py): an xgrammar matcher per
    constrained row (None: the row is unconstrained, or left its grammar, see `accept`) and one bitmask."""

    def __init__(self, engine: HFToolGrammar | None, row_tools: Sequence[ToolSet | None], mode: str):
        self.engine = engine
        self.matchers: list[Any] = [None if rt is None or engine is None
                                    else engine.matcher(rt.tools, rt.mode or mode, rt.parallel) for rt in row_tools]
        self.bitmask: Any = engine.allocate(len(row_tools)) if engine is not None else None

    def mask(self, logits: Any, alive: Sequence[int]) -> None:
        """Masks the live rows' logits (row r is prompt alive[r]) to the tokens their grammars allow, in place."""
        if self.engine is None or all(self.matchers[i] is None for i in alive):
            return
        self.bitmask.fill_(-1)  # all allowed, except in the rows a matcher fills
        for row, i in enumerate(alive):
            m = self.matchers[i]
            if m is not None and not m.is_terminated():
                m.fill_next_token_bitmask(self.bitmask, row)
        self.engine.apply(logits, self.bitmask[: len(alive)])

    def accept(self, i: int, token: int) -> bool:
        """Advances prompt i's matcher by its sampled token; False when its grammar rejected the token."""
        m = self.matchers[i]
        if m is not None and not m.is_terminated() and not m.accept_token(token):
            # masked sampling cannot draw a rejected token; if it ever does, the row leaves the grammar here
            # (the trainer's replay does the same) and its reply is scored as it is
            self.matchers[i] = None
            log.warning("tool grammar: row %d sampled token %d its grammar rejects; the rest of the reply is "
                        "unconstrained", i, token)
            return False
        return True


def _select_rows(cache: Any, idx: Any, static: bool) -> None:
    """Keeps these batch rows of a decode chunk's KV cache (a `DynamicCache`, or a `StaticCache` whose
    initialised layers are cut the same way)."""
    if not static:
        cache.batch_select_indices(idx)
        return
    for layer in cache.layers:
        if getattr(layer, "is_initialized", False):
            layer.keys = layer.keys.index_select(0, idx)
            layer.values = layer.values.index_select(0, idx)
            layer.batch_size = int(idx.shape[0])


class _CompileFailed(Exception):
    """torch.compile of the decode step failed: the chunk is decoded again eagerly (see `_generate_chunk`)."""


def _token_logprobs(logits: Any, targets: Any, temperature: float, constrained: tuple[Any, Any, Any] | None,
                    offset: int) -> Any:
    """log softmax(logits / T) at the target tokens, [rows, positions]; `logits` cover positions offset.. of the
    trajectory_logprobs frame. `constrained` = (rows, positions, additive masks) of tokens sampled under a tool
    grammar: there the normaliser is over the tokens the grammar allowed (masks rebuilt by replaying the
    matcher), so pi_theta is the distribution that sampled."""
    import torch

    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    lse = torch.logsumexp(logits, dim=-1)
    if constrained is not None:
        rows, pos, add = constrained
        here = (pos >= offset) & (pos < offset + logits.shape[1])
        if bool(here.any()):
            r, p = rows[here], pos[here] - offset
            lse = lse.index_put((r, p), torch.logsumexp(logits[r, p] + add[here], dim=-1))
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse


def _sample(logits: Any, params: SamplingParams, gens: list[Any]) -> tuple[Any, Any]:
    """Sample one token per row: (token ids, log-prob of each under softmax(logits / T)).

    Inverse-CDF sampling with one uniform per row from that row's own CPU generator: a row's draw does not
    depend on the other rows (unlike one `multinomial` over the batch), and works on any device.
    """
    import torch

    if params.temperature == 0:
        logp = torch.log_softmax(logits, dim=-1)
        tok = logits.argmax(dim=-1)
        return tok, logp.gather(-1, tok[:, None])[:, 0]
    logp = torch.log_softmax(logits / params.temperature, dim=-1)
    probs = logp.exp()
    u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in gens]).to(logits.device)
    if params.top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        cum = sorted_p.cumsum(dim=-1)
        drop = (cum - sorted_p) > params.top_p  # keep the smallest set whose mass reaches top_p
        cum = sorted_p.masked_fill(drop, 0.0).cumsum(dim=-1)
        pick = torch.searchsorted(cum, (u[:, None] * cum[:, -1:].double()).to(cum.dtype), right=True)
        tok = idx.gather(-1, pick.clamp(max=idx.shape[-1] - 1))[:, 0]
    else:
        cum = probs.cumsum(dim=-1)
        pick = torch.searchsorted(cum, (u[:, None] * cum[:, -1:].double()).to(cum.dtype), right=True)
        tok = pick.clamp(max=probs.shape[-1] - 1)[:, 0]
    return tok, logp.gather(-1, tok[:, None])[:, 0]


def _left_pad(seqs: Sequence[Sequence[int]], pad: int, device: Any) -> tuple[Any, Any]:
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        if s:
            ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[r, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def _common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _common_prefix_all(seqs: Sequence[Sequence[int]]) -> int:
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for s in seqs[1:]:
        n = _common_prefix(first, s, n)
    return n
