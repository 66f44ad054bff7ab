"""HFPolicy with the real packaged SmolLM2: batched decoding equals transformers' own greedy decoding, the
recorded log-probs are the model's, seeds reproduce, stop conditions and LoRA adapters work."""

from __future__ import annotations

import pytest
import torch

from espl.types import SamplingParams

SYSTEM = "You are a careful math tutor. Work step by step, then end with a line 'Answer: <number>'."


def convs(n=3):
    return [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"What is {i} plus {7 * i + 2}?"}]
            for i in range(n)]


@pytest.mark.parametrize("sharing", [False, True])
def test_greedy_batch_equals_model_generate(smol_policy, sharing):
    pol = smol_policy
    old = pol.prefix_sharing
    pol.prefix_sharing = sharing
    try:
        comps = pol.generate(convs(), SamplingParams(temperature=0, max_new_tokens=12))
        assert pol.last_stats.shared_prefix is sharing
    finally:
        pol.prefix_sharing = old
    for c in comps:  # each prompt alone through model.generate (no padding at all)
        ids = torch.tensor([list(c.prompt_ids)])
        ref = pol.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
        ref = [int(t) for t in ref[0, ids.shape[1]:]]
        assert list(c.token_ids) == ref[: len(c.token_ids)]
        assert len(c.token_ids) == 12 or c.finish_reason == "stop"


def test_prefix_sharing_encodes_the_shared_system_prompt_once(smol_policy):
    pol = smol_policy
    pol.prefix_sharing = None
    pol.generate(convs(4), SamplingParams(temperature=0, max_new_tokens=1))
    st = pol.last_stats
    assert st.shared_prefix and st.encoded_tokens < st.prompt_tokens * 0.6


def test_logprobs_are_the_models_and_prompt_text_is_recorded(smol_policy):
    pol = smol_policy
    params = SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=10, seed=5)
    c = pol.generate(convs(2), params)[1]
    assert c.prompt_text.startswith("<|im_start|>system\n" + SYSTEM)
    assert tuple(pol.tokenizer(c.prompt_text, add_special_tokens=False)["input_ids"]) == c.prompt_ids
    ids = torch.tensor([list(c.prompt_ids) + list(c.token_ids)])
    with torch.no_grad():
        logp = (pol.model(ids).logits[0].float() / 0.8).log_softmax(-1)
    n = len(c.prompt_ids)
    want = [logp[n - 1 + k, t].item() for k, t in enumerate(c.token_ids)]
    assert c.logprobs == pytest.approx(want, abs=1e-3)


def test_seed_reproduces_and_differs_across_seeds(smol_policy):
    p1 = SamplingParams(temperature=1.0, max_new_tokens=8, seed=11)
    a = smol_policy.generate(convs(), p1)
    b = smol_policy.generate(convs(), p1)
    c = smol_policy.generate(convs(), SamplingParams(temperature=1.0, max_new_tokens=8, seed=12))
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]


def test_token_budget_and_stop_strings(smol_policy):
    c = smol_policy.generate(convs(1), SamplingParams(temperature=0, max_new_tokens=3))[0]
    assert c.finish_reason == "length" and len(c.token_ids) == 3
    full = smol_policy.generate(convs(1), SamplingParams(temperature=0, max_new_tokens=20))[0].text
    word = full.split()[2]
    s = smol_policy.generate(convs(1), SamplingParams(temperature=0, max_new_tokens=20, stop=(word,)))[0]
    assert s.finish_reason == "stop" and word not in s.text and full.startswith(s.text)


def test_lora_adapter_trains_and_can_be_disabled():
    from espl.agents.hf import HFPolicy, LoraSettings

    pol = HFPolicy("smollm2-135m", lora=LoraSettings(r=4, alpha=8))
    assert any(p.requires_grad for p in pol.model.parameters())
    params = SamplingParams(temperature=0, max_new_tokens=6)
    base = pol.generate(convs(1), params)[0].token_ids
    with torch.no_grad():  # a trained adapter: perturb every lora_B (zero at init)
        g = torch.Generator().manual_seed(0)
        for name, p in pol.model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
    tuned = pol.generate(convs(1), params)[0].token_ids
    with pol.adapter_disabled():
        frozen = pol.generate(convs(1), params)[0].token_ids
    assert tuned != base and frozen == base
    pol.set_adapter_enabled(False)
    assert pol.generate(convs(1), params)[0].token_ids == base
    pol.set_adapter_enabled(True)
    assert pol.generate(convs(1), params)[0].token_ids == tuned
