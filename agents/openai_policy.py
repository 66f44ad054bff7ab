"""`OpenAIPolicy`: any OpenAI-compatible chat server as a `Policy` (vLLM serve, llama.cpp server, hosted APIs).

- One request per conversation, at most `max_concurrency` in flight (a thread pool over the `openai` client).
- Connection errors, timeouts, 429 and 5xx are retried `retries` times with exponential backoff; other 4xx
  (a bad request: prompt too long, unknown model) are not retried. If any conversation still failed, the
  call raises `GenerationError` carrying the completions that did finish (and one error text per failed
  one), so a rollout or an eval keeps its finished episodes.
- `tools` are passed as the request's `tools=`; the reply's native `tool_calls` come back on the message.
  `tool_format="hermes"` instead describes the tools in the system message (the same documented fallback as
  `HFPolicy` uses for templates without tool support) for servers that silently drop `tools=` (llama.cpp
  serving a model whose template has no tool section does); the env then parses `<tool_call>` blocks.
- Sampling: temperature, top_p, max_tokens, stop, and a seed per conversation derived from `params.seed`
  (the same seed for every conversation would make N rollouts of one problem identical).
- No token ids: the server tokenises, so the trajectory's token fields stay empty (not trainable).
- `params.tool_grammar` (agents/tool_grammar.py): a llama.cpp server this process started (`grammar_dialect
  = "llguidance"`, set by agents/llamacpp.py) gets the tool-call grammar as its `grammar` field, in both modes;
  any other server gets "required" as `response_format` json_schema (the reply is then a bare JSON call, which
  the envs read too); "auto" there is refused (ValueError): one JSON schema cannot also admit free text.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal, Sequence

from espl.agents.errors import GenerationError, error_kind
from espl.seeds import mix_seed
from espl.types import Completion, Message, SamplingParams

if TYPE_CHECKING:
    from espl.agents.policy import PolicySpec

log = logging.getLogger(__name__)

ToolFormat = Literal["native", "hermes"]


class OpenAIPolicy:
    """A chat model behind an OpenAI-compatible `/v1/chat/completions` endpoint."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        max_concurrency: int = 8,
        timeout_s: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        tool_format: ToolFormat = "native",
    ):
        import openai

        if not base_url or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url: must be an http(s) URL like http://127.0.0.1:8000/v1, got {base_url!r}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency: must be >= 1, got {max_concurrency}")
        if retries < 0:
            raise ValueError(f"retries: must be >= 0, got {retries}")
        if tool_format not in ("native", "hermes"):
            raise ValueError(f"tool_format: must be 'native' or 'hermes', got {tool_format!r}")
        self.base_url = base_url.rstrip("/")
        self.served_model = model  # the model name sent in each request (what the server serves)
        self.name = model
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.tool_format = tool_format
        key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"  # local servers accept any key
        # our own retry loop (with its own error report) replaces the client's
        self.client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=timeout_s, max_retries=0)
        self.tokens_generated = 0  # completion tokens reported by the server, cumulative
        self._lock = threading.Lock()
        self.owned_server: Any = None  # a server this policy started (agents/llamacpp.py): stopped by close()
        # "llguidance": the server takes a llguidance `grammar` (the packaged llama.cpp); None: response_format only
        self.grammar_dialect: str | None = None

    def policy_spec(self, device: str | None = None) -> "PolicySpec":
        """The `PolicySpec` that rebuilds this client elsewhere (a Ray worker); the key is not carried (workers
        read $OPENAI_API_KEY). A policy owning a llama.cpp server is rebuilt as a client of that server."""
        from espl.agents.policy import PolicySpec

        return PolicySpec(backend="openai", model=self.served_model, base_url=self.base_url,
                          tool_format=self.tool_format, max_concurrency=self.max_concurrency,
                          timeout_s=self.timeout_s, retries=self.retries)

    def model_source(self) -> dict[str, Any]:
        """The server and the model it serves (no weights to hash; the URL without credentials or query)."""
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(self.base_url)
        host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
        return {"kind": "server", "base_url": urlunsplit((parts.scheme, host, parts.path, "", "")),
                "model": self.served_model}

    def close(self) -> None:
        if self.owned_server is not None:
            self.owned_server.close()
            self.owned_server = None

    def generate_json(self, conversations: Sequence[Sequence[Message]], params: SamplingParams,
                      schemas: Sequence[dict]) -> list[str]:
        """One reply per conversation, constrained by the server to its JSON schema (`response_format`
        json_schema: llama.cpp, vLLM and OpenAI honour it). Used by the LLM mutator for its operations."""
        if len(schemas) != len(conversations):
            raise ValueError(f"schemas: one per conversation expected, got {len(schemas)} for {len(conversations)}")
        formats = [{"type": "json_schema", "json_schema": {"name": "reply", "schema": dict(s), "strict": True}}
                   for s in schemas]
        return [c.text for c in self.generate(conversations, params, response_formats=formats)]

    def generate(
        self,
        conversations: Sequence[Sequence[Message]],
        params: SamplingParams,
        tools: Sequence[dict[str, Any]] | None = None,
        seeds: Sequence[int] | None = None,
        *,
        response_formats: Sequence[dict] | None = None,
    ) -> list[Completion]:
        """`seeds`: one request seed per conversation (the rollout passes each episode's own, so a request's
        seed does not depend on the batch); default: derived from `params.seed` and the position.
        `response_formats`: one OpenAI `response_format` per conversation (see `generate_json`)."""
        convs = [list(c) for c in conversations]
        if seeds is not None and len(seeds) != len(convs):
            raise ValueError("seeds: must have one entry per conversation")
        if response_formats is not None and len(response_formats) != len(convs):
            raise ValueError("response_formats: must have one entry per conversation")
        if not convs:
            return []
        # only "required" is one JSON schema; every other mode admits free text
        if (tools and params.tool_grammar not in ("off", "required") and self.grammar_dialect is None
                and response_formats is None):
            raise ValueError(f"tool_grammar: {params.tool_grammar!r} needs a server that takes a grammar (backend "
                             "llamacpp); an OpenAI-compatible server takes one JSON schema per request: use 'required'")
        results: list[Completion | None] = [None] * len(convs)
        errors: list[str | None] = [None] * len(convs)
        kinds: list[Any] = [None] * len(convs)

        def work(i: int) -> None:
            try:
                results[i] = self._one(convs[i], params, tools, i, None if seeds is None else int(seeds[i]),
                                       None if response_formats is None else response_formats[i])
            except Exception as exc:  # reported together below, with the finished ones kept
                errors[i] = f"{type(exc).__name__}: {exc}"
                kinds[i] = error_kind(exc, constrained=response_formats is not None)

        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(convs))) as pool:
            list(pool.map(work, range(len(convs))))
        failed = [i for i, e in enumerate(errors) if e is not None]
        if failed:
            raise GenerationError(
                f"{len(failed)} of {len(convs)} requests to {self.base_url} failed after {self.retries} retries "
                f"(first: {errors[failed[0]]}); the {len(convs) - len(failed)} finished completions are kept "
                "in .completions", results, errors, kinds)
        return results  # type: ignore[return-value]

    # ---- one request ------------------------------------------------------------------------------------
    def _request(self, conv: list[Message], params: SamplingParams, tools: Sequence[dict] | None,
                 index: int, seed: int | None = None, response_format: dict | None = None) -> dict[str, Any]:
        messages = [_wire(m) for m in conv]
        req: dict[str, Any] = {
            "model": self.served_model, "messages": messages, "temperature": params.temperature,
            "top_p": params.top_p, "max_tokens": params.max_new_tokens,
        }
        if seed is not None:
            req["seed"] = seed % (2**31 - 1)
        elif params.seed is not None:
            req["seed"] = mix_seed(params.seed, index) % (2**31 - 1)  # row `index`'s stream, as HFPolicy's
        if params.stop:
            req["stop"] = list(params.stop)
        if response_format is not None:
            req["response_format"] = response_format
        elif tools and params.tool_grammar != "off":
            from espl.agents import tool_grammar

            mode = tool_grammar.next_reply_mode(params.tool_grammar, conv)
            if self.grammar_dialect == "llguidance":
                req["extra_body"] = {"grammar": tool_grammar.llguidance_grammar(tools, mode,
                                                                                params.parallel_tool_calls)}
            else:
                req["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": "tool_call", "schema": tool_grammar.call_schema(tools, params.parallel_tool_calls)}}
        # a grammar of our own replaces the server's native tool handling (llama.cpp refuses both at once):
        # the tools are then described in the prompt, Hermes-style, as the grammar's blocks are
        if tools and self.tool_format == "native" and "extra_body" not in req:
            req["tools"] = list(tools)
        elif tools:
            from espl.envs.tools import hermes_tools_prompt

            desc = hermes_tools_prompt(tools)
            if messages and messages[0]["role"] == "system":
                messages[0] = {**messages[0], "content": f"{messages[0].get('content') or ''}\n\n{desc}".lstrip()}
            else:
                messages.insert(0, {"role": "system", "content": desc})
        return req

    def _one(self, conv: list[Message], params: SamplingParams, tools: Sequence[dict] | None,
             index: int, seed: int | None = None, response_format: dict | None = None) -> Completion:
        import openai

        req = self._request(conv, params, tools, index, seed, response_format)
        retryable = (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
                     openai.InternalServerError)
        for attempt in range(self.retries + 1):
            try:
                resp = self.client.chat.completions.create(**req)
                break
            except retryable as exc:
                if attempt == self.retries:
                    raise
                delay = self.backoff_s * (2 ** attempt)
                log.warning("request to %s failed (%s: %s); retry %d/%d in %.1f s", self.base_url,
                            type(exc).__name__, exc, attempt + 1, self.retries, delay)
                time.sleep(delay)
            except openai.APIStatusError as exc:
                if exc.status_code >= 500:  # e.g. 503 from a proxy: treat as retryable
                    if attempt == self.retries:
                        raise
                    time.sleep(self.backoff_s * (2 ** attempt))
                    continue
                raise
        choice = resp.choices[0]
        msg: Message = {"role": "assistant", "content": choice.message.content or ""}
        if choice.message.tool_calls:
            msg["tool_calls"] = [
                {"id": tc.id or f"call_{k}", "type": "function",
                 "function": {"name": tc.function.name, "arguments": tc.function.arguments or "{}"}}
                for k, tc in enumerate(choice.message.tool_calls)
            ]
        finish = {"length": "length", "stop": "stop", "tool_calls": "stop", "function_call": "stop"}.get(
            choice.finish_reason or "stop", "stop")
        if resp.usage is not None:
            with self._lock:
                self.tokens_generated += int(resp.usage.completion_tokens or 0)
        return Completion(message=msg, finish_reason=finish)  # type: ignore[arg-type]


def _wire(m: Message) -> dict[str, Any]:
    """A message as the OpenAI API takes it (content may not be missing; tool calls keep JSON-text args)."""
    d: dict[str, Any] = {"role": m["role"], "content": m.get("content") or ""}
    if m.get("tool_calls"):
        d["tool_calls"] = [dict(tc) for tc in m["tool_calls"]]
    for key in ("tool_call_id", "name"):
        if m.get(key):
            d[key] = m[key]
    return d
