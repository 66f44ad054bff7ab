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


# ---- the static (pre-allocated) KV cache: same tokens, same log-probs as the dynamic one -------------------
@pytest.fixture
def kv(smol_policy):
    """Set the policy's KV cache kind for one test and restore it (and prefix sharing) afterwards."""
    old = (smol_policy.kv_cache, smol_policy.compile_decode, smol_policy.prefix_sharing)

    def use(kind, sharing=None):
        smol_policy.kv_cache, smol_policy.prefix_sharing = kind, sharing

    yield use
    smol_policy.kv_cache, smol_policy.compile_decode, smol_policy.prefix_sharing = old


def mixed_convs():
    # replies of different lengths: some rows stop early and leave the batch while others decode on
    return [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}] for q in (
        "What is 3 plus 9?", "Say only: ok", "Explain in detail how to add 17 and 25, step by step.", "Hi")]


@pytest.mark.parametrize("sharing", [False, True])
def test_static_cache_equals_dynamic_with_rows_finishing_early(smol_policy, kv, sharing):
    params = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=40, seed=3)
    out = {}
    for kind in ("dynamic", "static"):
        kv(kind, sharing)
        out[kind] = smol_policy.generate(mixed_convs(), params, seeds=[5, 6, 7, 8])
        assert smol_policy.last_stats.shared_prefix is sharing
    dyn, sta = out["dynamic"], out["static"]
    lens = [len(c.token_ids) for c in dyn]
    assert min(lens) < 40 and max(lens) == 40, lens  # the batch really lost rows while others went on
    assert [c.finish_reason for c in sta] == [c.finish_reason for c in dyn]
    for a, b in zip(dyn, sta):
        assert a.token_ids == b.token_ids and a.text == b.text
        assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4)


def test_static_cache_greedy_equals_model_generate_and_logprobs_are_the_models(smol_policy, kv):
    kv("static")
    comps = smol_policy.generate(convs(), SamplingParams(temperature=0, max_new_tokens=12))
    for c in comps:
        ids = torch.tensor([list(c.prompt_ids)])
        ref = smol_policy.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
        assert list(c.token_ids) == [int(t) for t in ref[0, ids.shape[1]:]][: len(c.token_ids)]
    c = smol_policy.generate(convs(2), SamplingParams(temperature=0.8, max_new_tokens=10, seed=5))[1]
    ids = torch.tensor([list(c.prompt_ids) + list(c.token_ids)])
    with torch.no_grad():
        logp = (smol_policy.model(ids).logits[0].float() / 0.8).log_softmax(-1)
    n = len(c.prompt_ids)
    assert c.logprobs == pytest.approx([logp[n - 1 + k, t].item() for k, t in enumerate(c.token_ids)], abs=1e-4)


def test_static_cache_multi_turn_is_token_exact_and_logprobs_match_trajectory_logprobs(smol_policy, kv):
    from espl.agents.rollout import Episode, rollout

    from tests.agents.test_rollout import CountdownEnv

    params = SamplingParams(temperature=0.9, max_new_tokens=6, seed=3)
    eps = [Episode(seed=s, system_prompt=None if s % 2 else "Answer with one number.") for s in range(5)]
    kv("dynamic")
    dyn = rollout(CountdownEnv, smol_policy, eps, params, max_batch=4)
    kv("static")
    sta = rollout(CountdownEnv, smol_policy, eps, params, max_batch=4)
    assert any(t.num_turns == 2 for t in sta)  # a second turn continues the first turn's exact tokens
    for a, b in zip(dyn, sta):
        assert a.token_ids == b.token_ids and a.mask == b.mask and a.messages == b.messages
        assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4)
        first = smol_policy.renderer.start(b.messages[: 2 if b.system_prompt else 1])
        assert tuple(b.token_ids[: len(first.ids)]) == first.ids
    with torch.no_grad():
        lp = smol_policy.trajectory_logprobs(sta, [1.0] * len(sta), 0.9)
    m = lp.mask.bool()
    assert int(m.sum()) == sum(sum(t.mask) for t in sta)
    torch.testing.assert_close(lp.logprobs[m], lp.old_logprobs[m], atol=1e-4, rtol=0)


def test_kv_cache_choice_is_validated_and_auto_is_dynamic_on_cpu(smol_policy, kv):
    from espl.agents.hf import HFPolicy

    with pytest.raises(ValueError, match="kv_cache: must be one of dynamic, static, auto"):
        HFPolicy(smol_policy.model, tokenizer=smol_policy.tokenizer, kv_cache="paged")
    kv("auto")
    assert not smol_policy._static_kv() and not smol_policy._compiled()  # measured: see docs/performance.md
    kv("static")
    assert smol_policy._static_kv()


def _static_compiled_equals_dynamic(pol):
    params = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=40, seed=3)
    pol.kv_cache = "dynamic"
    dyn = pol.generate(mixed_convs(), params, seeds=[5, 6, 7, 8])
    pol.kv_cache, pol.compile_decode = "static", True
    sta = pol.generate(mixed_convs(), params, seeds=[5, 6, 7, 8])
    assert not pol._compile_failed
    assert min(len(c.token_ids) for c in dyn) < 40  # finished rows stayed in the batch, fed padding
    for a, b in zip(dyn, sta):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
        assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4)


def test_static_cache_with_finished_rows_kept_in_the_batch_equals_dynamic(smol_policy, kv):
    """The compiled path's batch handling (finished rows stay, fed padding, outputs ignored), run through the
    model's eager forward in place of the torch.compile of it (the compile itself: the slow test below)."""
    old = smol_policy._compiled_forward
    smol_policy._compiled_forward = smol_policy._lm.forward
    try:
        _static_compiled_equals_dynamic(smol_policy)
    finally:
        smol_policy._compiled_forward = old


@pytest.mark.slow
def test_static_cache_compiled_decode_equals_dynamic():
    """torch.compile of the decode step (~1 minute of compiling on a CPU): same tokens and log-probs."""
    from espl.agents.hf import HFPolicy

    _static_compiled_equals_dynamic(HFPolicy("smollm2-135m"))


def test_decode_chunks_group_prompts_by_length_and_bound_the_padding_on_cpu(smol_policy):
    """Issue 17 / 15: 200 BFCL prompts of 250 to 3,200 tokens in arrival-order chunks of 64 encoded 3.78x their
    tokens (left padding); chunks are now taken shortest first and, on CPU, cut before the padded prefill
    exceeds PAD_SLACK times the real tokens. Rows keep their order in the output (generate_tokens maps them
    back: test_greedy_batch_equals_model_generate)."""
    from espl.agents.hf import PAD_SLACK, decode_chunks

    lengths = [300, 3200, 310, 320, 3000, 305]
    chunks = decode_chunks(list(range(6)), lengths, 64, cap_padding=True)
    assert chunks == [[0, 5, 2, 3], [4, 1]]
    for c in chunks:
        assert len(c) * max(lengths[i] for i in c) <= PAD_SLACK * sum(lengths[i] for i in c)
    assert decode_chunks(list(range(6)), lengths, 4, cap_padding=False) == [[0, 5, 2, 3], [4, 1]]  # max_batch only
    assert decode_chunks(list(range(6)), lengths, 64, cap_padding=False) == [[0, 5, 2, 3, 4, 1]]
    assert sorted(i for c in decode_chunks([5, 1, 3], lengths, 64, cap_padding=True) for i in c) == [1, 3, 5]
    # the real policy on this CPU caps the padding
    assert smol_policy.device.type == "cpu" and smol_policy._chunks(list(range(6)), lengths) == chunks


def test_activation_checkpointing_recomputes_layers_and_keeps_the_gradients():
    """HFPolicy(activation_checkpointing=True), the default: the update's forward keeps only each decoder
    layer's input and recomputes the layer in backward (memory: a 1,536-token Qwen2.5-0.5B episode peaked at
    9.9 GiB without, 6.5 GiB with, docs/performance.md); log-probs and LoRA gradients are those without it."""
    import torch

    from espl.agents.hf import HFPolicy, LoraSettings
    from espl.types import Trajectory

    L = 96
    traj = Trajectory(env_id="x", task_id="t", messages=[], reward=1.0, reason="", token_ids=[100 + i for i in range(L)],
                      logprobs=[0.0] * L, mask=[0] * (L - 24) + [1] * 24)
    pol = HFPolicy("smollm2-135m", lora=LoraSettings(r=4, alpha=8), activation_checkpointing=False,
                   checkpoint_min_tokens=0)
    with torch.no_grad():  # LoRA B starts at zero: move it so the adapter's gradients are not trivial
        for name, p in pol.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.02)
    attn_calls: list[int] = []
    pol._lm.get_decoder().layers[2].self_attn.register_forward_pre_hook(lambda m, a: attn_calls.append(1))
    results = []
    for on in (False, True):
        pol.activation_checkpointing = on
        pol.set_training(True)
        pol.model.zero_grad(set_to_none=True)
        attn_calls.clear()
        lp = pol.trajectory_logprobs([traj], [1.0], 1.0)
        (lp.logprobs * lp.mask).sum().backward()
        grads = {n: p.grad.clone() for n, p in pol.model.named_parameters() if p.grad is not None}
        results.append((lp.logprobs.detach(), grads, len(attn_calls)))
        pol.set_training(False)
    (lp_off, g_off, calls_off), (lp_on, g_on, calls_on) = results
    assert (calls_off, calls_on) == (1, 2)  # the layer ran again in backward only with checkpointing
    torch.testing.assert_close(lp_on, lp_off)
    assert g_off and g_on.keys() == g_off.keys()
    for name in g_off:
        torch.testing.assert_close(g_on[name], g_off[name], atol=1e-6, rtol=1e-4)

    # below `checkpoint_min_tokens` padded tokens (rows x longest) a micro-batch keeps its activations; at or
    # above it the layers are checkpointed again, both within one train mode
    pol.checkpoint_min_tokens = 2 * L
    pol.set_training(True)
    calls = []
    for rows in (1, 2, 1):
        attn_calls.clear()
        lp = pol.trajectory_logprobs([traj] * rows, [1.0] * rows, 1.0)
        (lp.logprobs * lp.mask).sum().backward()
        calls.append(len(attn_calls))
    pol.set_training(False)
    assert calls == [1, 2, 1]
    with pytest.raises(ValueError, match="checkpoint_min_tokens"):
        HFPolicy("smollm2-135m", checkpoint_min_tokens=-1)
