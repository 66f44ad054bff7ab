"""Grammar-constrained JSON generation for HF transformers models (xgrammar), used by the LLM mutator so
that a 135M model still writes operations that parse. Policies with their own grammar support (e.g. a
llama.cpp server's `json_schema`) provide `generate_json` instead and this module is not used.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from espl.types import Message, SamplingParams


class XGrammarJson:
    """`generate_json(conversations, params, schemas) -> texts` over `policy.model` / `policy.tokenizer`.

    Each conversation is decoded under its own JSON schema (xgrammar's HF logits processor takes one
    compiled grammar per batch row). Sampling is seeded with `params.seed` without disturbing the
    global torch RNG. When the policy exposes `base_model()` (a context manager that disables its LoRA
    adapter) the caller decides which weights generate; this class uses the model as it is.
    """

    def __init__(self, policy: Any):
        import xgrammar as xgr

        self.policy = policy
        self.model = policy.model
        self.tokenizer = policy.tokenizer
        vocab = getattr(self.model.config, "vocab_size", None)
        info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=vocab)
        self._compiler = xgr.GrammarCompiler(info)
        self._cache: dict[str, Any] = {}

    def _compiled(self, schema: dict) -> Any:
        key = json.dumps(schema, sort_keys=True)
        if key not in self._cache:
            # compact JSON without free whitespace: tiny models otherwise loop on spaces and newlines
            self._cache[key] = self._compiler.compile_json_schema(key, any_whitespace=False)
        return self._cache[key]

    def __call__(self, conversations: Sequence[Sequence[Message]], params: SamplingParams, schemas: Sequence[dict]) -> list[str]:
        import torch
        from xgrammar.contrib.hf import LogitsProcessor

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
        processor = LogitsProcessor([self._compiled(s) for s in schemas])
        sample = params.temperature > 0
        kwargs = dict(do_sample=sample, max_new_tokens=params.max_new_tokens, logits_processor=[processor],
                      pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        if sample:
            kwargs.update(temperature=params.temperature, top_p=params.top_p)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            if params.seed is not None:
                torch.manual_seed(params.seed)
            out = self.model.generate(**batch, **kwargs)
        new = out[:, batch["input_ids"].shape[1]:]
        return [tok.decode(row, skip_special_tokens=True) for row in new]
