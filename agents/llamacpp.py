"""A llama.cpp server (the `xllamacpp` package) in this process, on 127.0.0.1, serving a GGUF model.

Used where a second copy of a frozen model should run beside a torch one on the CPU: llama.cpp decodes
the packaged GGUFs several times faster than transformers does on a laptop CPU, takes its own threads,
and constrains replies to a JSON schema (`response_format`), which the LLM mutator uses. Talk to it with
`OpenAIPolicy(server.url, ...)`; `llamacpp_policy` does both.

    with LlamaCppServer(resolve_model("smollm2-135m").gguf_path, threads=1) as server:
        policy = OpenAIPolicy(server.url, model="smollm2-135m")
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class LlamaCppServer:
    """Starts on construction (port 0: a free port), stops on `close()` or at the end of a `with` block."""

    def __init__(self, gguf: str | Path, *, threads: int = 1, parallel: int = 4, ctx_per_slot: int = 2048):
        try:
            import xllamacpp
        except ImportError:
            raise ImportError("the llama.cpp server needs the `xllamacpp` package: pip install xllamacpp") from None
        path = Path(gguf)
        if not path.is_file() or path.suffix != ".gguf":
            raise ValueError(f"gguf: a llama.cpp server needs a .gguf file, got {str(gguf)!r}")
        for name, value in (("threads", threads), ("parallel", parallel), ("ctx_per_slot", ctx_per_slot)):
            if value < 1:
                raise ValueError(f"{name}: must be >= 1, got {value}")
        p = xllamacpp.CommonParams()
        p.model.path = str(path)
        p.hostnames = ["127.0.0.1"]  # never reachable from outside this machine
        p.port = 0
        p.cpuparams.n_threads = threads
        p.cpuparams_batch.n_threads = threads
        # llama.cpp's threads busy-wait between ops by default (poll 50); beside other CPU work (a torch
        # update, tests) that made decoding 10-50x slower on a 2-core machine (issue 14). 0: sleep instead.
        p.cpuparams.poll = 0
        p.cpuparams_batch.poll = 0
        p.n_parallel = parallel
        p.n_ctx = parallel * ctx_per_slot
        p.verbosity = 0 if not log.isEnabledFor(logging.DEBUG) else 3  # llama.cpp logs every request otherwise
        from espl.agents.models import ModelSpec, check_memory

        # refused before llama.cpp allocates anything: weights + the KV cache of every slot
        check_memory(ModelSpec(name=str(path), source="gguf", path=str(path.parent), gguf_file=path.name),
                     backend="llamacpp", n_ctx=p.n_ctx)
        self._server: Any = xllamacpp.Server(p)
        addr = self._server.listening_address
        self.url = (addr if addr.startswith("http") else f"http://{addr}") + "/v1"
        self.gguf = path
        log.info("llama.cpp server for %s on %s (%d threads, %d slots)", path.name, self.url, threads, parallel)

    def close(self) -> None:
        self._server = None  # xllamacpp stops the server when the object goes away

    def __enter__(self) -> "LlamaCppServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def llamacpp_policy(model: str, *, threads: int = 1, parallel: int = 4, ctx_per_slot: int = 2048,
                    tool_format: str = "native") -> Any:
    """An `OpenAIPolicy` on a llama.cpp server of `model` (an alias or a .gguf path) that it owns:
    `policy.close()` stops the server. (`build_policy(PolicySpec(backend="llamacpp", ...))` calls this.)"""
    from espl.agents.models import resolve_model
    from espl.agents.openai_policy import OpenAIPolicy

    spec = resolve_model(model)
    if spec.gguf_path is None:
        raise ValueError(f"model: {model!r} is not a GGUF model; llama.cpp serves GGUF files (an alias such as "
                         "smollm2-135m or qwen2.5-coder-0.5b, or a path to a .gguf)")
    server = LlamaCppServer(spec.gguf_path, threads=threads, parallel=parallel, ctx_per_slot=ctx_per_slot)
    policy = OpenAIPolicy(server.url, model=spec.name, max_concurrency=parallel, timeout_s=600.0,
                          tool_format=tool_format)  # type: ignore[arg-type]
    policy.owned_server = server
    policy.grammar_dialect = "llguidance"  # the packaged llama.cpp reads llguidance grammars (tool_grammar)
    return policy
