"""`PolicySpec` / `build_policy` and the capability protocols, on the real packaged SmolLM2 (and a real
llama.cpp server where one is needed)."""

from __future__ import annotations

import pickle

import pytest

from espl.agents.policy import (
    JsonPolicy, LoraSettings, Policy, PolicySpec, TokenPolicy, TrainablePolicy, build_policy,
)
from espl.types import SamplingParams
from tests.conftest import closed_port_url


@pytest.mark.parametrize("fields, field", [
    ({"backend": "tpu"}, "backend"),
    ({"device": "gpu"}, "device"),
    ({"dtype": "fp8"}, "dtype"),
    ({"max_batch": 0}, "max_batch"),
    ({"threads": 0}, "threads"),
    ({"tool_format": "xml"}, "tool_format"),
    ({"backend": "openai", "base_url": "localhost:8000"}, "base_url"),
    ({"backend": "openai"}, "base_url"),
    ({"base_url": "http://127.0.0.1:1/v1"}, "base_url"),  # hf talks to no server
    ({"backend": "llamacpp", "lora": LoraSettings(r=4)}, "lora"),
    ({"adapter": "adapter.safetensors"}, "adapter"),  # weights without the LoRA shape they fit
    ({"model": ""}, "model"),
])
def test_bad_specs_name_the_field(fields, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        PolicySpec(**fields)


def test_spec_is_frozen_hashable_picklable_and_hides_the_key():
    spec = PolicySpec(backend="openai", base_url="http://127.0.0.1:8080/v1", model="m", api_key="sk-secret")
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert {spec: 1}[spec.with_()] == 1
    assert "sk-secret" not in repr(spec) and "api_key" not in spec.to_dict()
    with pytest.raises(AttributeError):
        spec.model = "other"  # type: ignore[misc]
    with pytest.raises(ValueError, match="^device:"):
        PolicySpec().with_(device="gpu")


def test_openai_spec_builds_a_plain_policy_without_token_capabilities():
    url = closed_port_url()
    pol = build_policy(PolicySpec(backend="openai", base_url=url, model="m", tool_format="hermes"))
    assert isinstance(pol, Policy) and isinstance(pol, JsonPolicy)
    assert not isinstance(pol, TokenPolicy) and not isinstance(pol, TrainablePolicy)
    assert pol.served_model == "m" and pol.tool_format == "hermes"
    assert pol.policy_spec() == PolicySpec(backend="openai", base_url=url.rstrip("/"), model="m",
                                           tool_format="hermes")
    pol.close()


def test_hf_spec_builds_a_trainable_policy_whose_adapter_round_trips():
    torch = pytest.importorskip("torch")
    spec = PolicySpec(model="smollm2-135m", lora=LoraSettings(r=4, alpha=8), lora_init_seed=3)
    pol = build_policy(spec)
    assert isinstance(pol, TrainablePolicy) and isinstance(pol, TokenPolicy) and isinstance(pol, JsonPolicy)
    params = pol.trainable_parameters()
    assert params and all(p.requires_grad for p in params)
    assert pol.policy_spec() == PolicySpec(model="smollm2-135m", lora=LoraSettings(r=4, alpha=8), dtype="float32")
    # the same lora_init_seed gives the same initial adapter
    again = build_policy(spec)
    state, state2 = pol.adapter_state(), again.adapter_state()
    assert state.keys() == state2.keys() and all(torch.equal(state[k], state2[k]) for k in state)
    # load_adapter_state copies weights in; the adapter changes the model's output
    with torch.no_grad():
        for k in state:
            if "lora_B" in k:
                state[k] = torch.full_like(state[k], 0.01)
    again.load_adapter_state(state)
    assert all(torch.equal(again.adapter_state()[k], state[k]) for k in state)
    # refused: weights of another LoRA shape, names the model lacks
    wrong = {k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) for k, v in state.items()}
    with pytest.raises(ValueError, match="^adapter:.*shape"):
        again.load_adapter_state(wrong)
    with pytest.raises(ValueError, match="^adapter:.*unknown parameters"):
        again.load_adapter_state({"not.a.parameter": torch.zeros(1)})


def test_hf_spec_loads_an_adapter_file(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    lora = LoraSettings(r=4, alpha=8)
    pol = build_policy(PolicySpec(lora=lora, lora_init_seed=0))
    state = {k: (torch.full_like(v, 0.02) if "lora_B" in k else v) for k, v in pol.adapter_state().items()}
    save_file(state, str(tmp_path / "adapter.safetensors"))
    loaded = build_policy(PolicySpec(lora=lora, adapter=str(tmp_path / "adapter.safetensors")))
    assert all(torch.equal(loaded.adapter_state()[k], v) for k, v in state.items())
    assert not loaded.model.training
    with pytest.raises(FileNotFoundError, match="^adapter:"):
        build_policy(PolicySpec(lora=lora, adapter=str(tmp_path / "missing.safetensors")))


def test_generate_takes_per_conversation_seeds(smol_policy):
    convs = [[{"role": "user", "content": "Name a colour."}], [{"role": "user", "content": "Name a fruit."}]]
    params = SamplingParams(temperature=1.0, max_new_tokens=8, seed=0)
    both = smol_policy.generate(convs, params, seeds=[11, 12])
    alone = smol_policy.generate(convs[1:], params, seeds=[12])
    assert both[1].token_ids == alone[0].token_ids  # a row's tokens depend on its seed, not on its batch


def test_llamacpp_spec_owns_its_server():
    import importlib.util

    from tests.conftest import require

    require(importlib.util.find_spec("xllamacpp") is not None, "xllamacpp (llama.cpp server)")
    pol = build_policy(PolicySpec(backend="llamacpp", model="smollm2-135m", threads=1, parallel=1, ctx_per_slot=512))
    try:
        assert isinstance(pol, Policy) and isinstance(pol, JsonPolicy) and not isinstance(pol, TokenPolicy)
        out = pol.generate([[{"role": "user", "content": "Say hi."}]], SamplingParams(max_new_tokens=4, seed=0))
        assert len(out) == 1 and pol.tokens_generated > 0
    finally:
        pol.close()
    assert pol.owned_server is None
