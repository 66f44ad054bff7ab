"""Grammar-constrained JSON generation for HF transformers models (xgrammar): `HFPolicy.generate_json`
(the `JsonPolicy` capability), which the LLM mutator uses so that a 135M model still writes operations that
parse. Other backends constrain in their own way (an OpenAI-compatible server's `response_format`).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Sequence

from espl.types import Message, SamplingParams

log = logging.getLogger(__name__)


class _GrammarMask:
    """A transformers logits processor that masks each batch row to its JSON grammar (xgrammar).

    Like `xgrammar.contrib.hf.LogitsProcessor`, but a sampled token the grammar does not accept ends that
    row (only its stop tokens stay allowed) instead of raising: the row's text is then invalid and the mutator
    counts it as a rejected operation, as it does any other bad reply. xgrammar's own processor asserts
    there, which took a training run down on a GPU (Qwen2.5-Coder-0.5B, CUDA). `failures` counts such rows.
    """

    def __init__(self, compiled: Sequence[Any], stop_ids: Sequence[int]):
        import xgrammar as xgr

        self._xgr = xgr
        self.matchers = [xgr.GrammarMatcher(g) for g in compiled]
        self.vocab = compiled[0].tokenizer_info.vocab_size
        self.bitmask = xgr.allocate_token_bitmask(len(compiled), self.vocab)
        self.stop_ids = sorted({int(t) for t in stop_ids})
        self.failed = [False] * len(compiled)
        self.started = False

    @property
    def failures(self) -> int:
        return sum(self.failed)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        n = len(self.matchers)
        if input_ids.shape[0] != n:
            raise RuntimeError(f"grammar mask: batch of {input_ids.shape[0]} rows for {n} grammars")
        if self.started:
            last = input_ids[:, -1].tolist()
            for i, m in enumerate(self.matchers):
                if not self.failed[i] and not m.is_terminated() and not m.accept_token(int(last[i])):
                    self.failed[i] = True
        self.started = True
        self.bitmask.fill_(-1)  # all allowed: rows that are finished or failed are handled below
        for i, m in enumerate(self.matchers):
            if not self.failed[i] and not m.is_terminated():
                m.fill_next_token_bitmask(self.bitmask, i)
        on_device = scores if scores.device.type in ("cuda", "cpu") else scores.to("cpu")
        self._xgr.apply_token_bitmask_inplace(on_device, self.bitmask.to(on_device.device))
        scores = on_device.to(scores.device)
        rows = [i for i, bad in enumerate(self.failed) if bad]
        if rows:
            keep = scores[rows][:, self.stop_ids].clone()
            scores[rows] = -torch.inf
            scores[torch.tensor(rows, device=scores.device)[:, None], torch.tensor(self.stop_ids, device=scores.device)] = keep
        return scores


class XGrammarJson:
    """`(conversations, params, schemas) -> texts` over a transformers model and its tokenizer.

    Each conversation is decoded under its own JSON schema (xgrammar's HF logits processor takes one
    compiled grammar per batch row). Sampling is seeded with `params.seed` without disturbing the
    global torch RNG. The model is used as it is: `HFPolicy.adapter_disabled()` around the call makes it
    the frozen base model.
    """

    def __init__(self, model: Any, tokenizer: Any):
        import xgrammar as xgr

        self.model = model
        self.tokenizer = tokenizer
        vocab = getattr(self.model.config, "vocab_size", None)
        info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=vocab)
        self._compiler = xgr.GrammarCompiler(info)
        self._cache: dict[str, Any] = {}
        self.failures = 0  # rows ended because a sampled token broke the grammar (see _GrammarMask)

    def _compiled(self, schema: dict) -> Any:
        key = json.dumps(schema, sort_keys=True)
        if key not in self._cache:
            # compact JSON without free whitespace: tiny models otherwise loop on spaces and newlines
            self._cache[key] = self._compiler.compile_json_schema(key, any_whitespace=False)
        return self._cache[key]

    def __call__(self, conversations: Sequence[Sequence[Message]], params: SamplingParams, schemas: Sequence[dict]) -> list[str]:
        import torch

        if len(schemas) != len(conversations):
            raise ValueError(f"schemas: one per conversation expected, got {len(schemas)} for {len(conversations)}")
        tok = self.tokenizer
        texts = [tok.apply_chat_template(list(c), tokenize=False, add_generation_prompt=True) for c in conversations]
        side = tok.padding_side
        tok.padding_side = "left"
        try:
            batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tok.padding_side = side
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        stops = self.model.generation_config.eos_token_id
        stops = [stops] if isinstance(stops, int) else list(stops or [])
        stops += [t for t in (tok.eos_token_id, tok.pad_token_id) if t is not None]
        processor = _GrammarMask([self._compiled(s) for s in schemas], stops)
        sample = params.temperature > 0
        kwargs = dict(do_sample=sample, max_new_tokens=params.max_new_tokens, logits_processor=[processor],
                      pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        if sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            if params.seed is not None:
                torch.manual_seed(params.seed)
            out = self.model.generate(**batch, **kwargs)
        if processor.failures:
            self.failures += processor.failures
            log.warning("constrained JSON: %d of %d rows sampled a token their grammar rejects; those replies end "
                        "there and count as invalid", processor.failures, len(texts))
        new = out[:, batch["input_ids"].shape[1]:]
        return [tok.decode(row, skip_special_tokens=True) for row in new]
