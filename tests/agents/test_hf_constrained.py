"""Grammar-constrained JSON of the HF backend (`HFPolicy.generate_json`, xgrammar), on the real packaged SmolLM2."""

from __future__ import annotations

import json

import pytest

xgr = pytest.importorskip("xgrammar")  # a dev dependency: CI installs it

SCHEMA = {
    "type": "object",
    "properties": {"op": {"enum": ["add", "remove"]}, "text": {"type": "string", "maxLength": 40}},
    "required": ["op", "text"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def policy():
    from espl.agents.hf import HFPolicy

    return HFPolicy("smollm2-135m")


def test_constrained_replies_parse_and_follow_the_schema(policy):
    import jsonschema

    from espl.agents.policy import JsonPolicy
    from espl.types import SamplingParams

    assert isinstance(policy, JsonPolicy)
    convs = [[{"role": "user", "content": "Write a haiku about the sea."}],
             [{"role": "user", "content": "Propose one rule for solving equations."}]]
    replies = policy.generate_json(convs, SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=64, seed=3),
                                   [SCHEMA, SCHEMA])
    for reply in replies:
        jsonschema.validate(json.loads(reply), SCHEMA)
    assert policy.json_failures == 0


def test_a_token_the_grammar_rejects_ends_that_row_instead_of_raising(policy):
    """xgrammar's own HF processor asserts here; ours marks the row failed and leaves it only its stop tokens."""
    import torch

    from espl.agents.hf_constrained import XGrammarJson, _GrammarMask

    gen = XGrammarJson(policy.model, policy.tokenizer)
    grammar = gen._compiled(SCHEMA)
    vocab = policy.model.config.vocab_size
    eos = policy.tokenizer.eos_token_id
    mask = _GrammarMask([grammar, grammar], [eos])
    prompt = torch.tensor([[1, 2], [1, 2]])
    first = mask(prompt, torch.zeros(2, vocab))
    brace = policy.tokenizer.encode("{", add_special_tokens=False)[0]
    word = policy.tokenizer.encode("hello", add_special_tokens=False)[0]
    assert torch.isfinite(first[0, brace]) and not torch.isfinite(first[0, word])  # a JSON object must open

    second = mask(torch.tensor([[1, 2, brace], [1, 2, word]]), torch.zeros(2, vocab))  # row 1 broke the grammar
    assert mask.failed == [False, True] and mask.failures == 1
    assert torch.isfinite(second[1]).nonzero().flatten().tolist() == [eos]  # the failed row can only stop
    assert torch.isfinite(second[0]).any() and not torch.isfinite(second[0, eos])  # row 0 goes on: "{" needs a key
