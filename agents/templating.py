"""Chat-template rendering for trainable backends: token-exact prompts, turn after turn.

`ChatRenderer` wraps a Hugging Face tokenizer and its chat template:

- `start(messages, tools)`: the first prompt of an episode, rendered and tokenised once.
- `continuation(history, new_messages, tools, ended_with_eot)`: the token ids to append after the model's own
  generated tokens so that the next prompt is `prev prompt_ids + generated ids + these ids`. Only the
  *suffix* for the new messages is rendered and tokenised; earlier tokens are never re-tokenised from text
  (re-tokenising a decoded reply can give other ids than the model sampled, the multi-turn drift that
  breaks RL). The suffix is found by rendering the conversation with a sentinel in place of the last
  assistant reply and taking what the template writes after it (its end-of-turn marker, the new messages
  and the next generation prompt).
- Tools: when the template renders `tools=` (detected by rendering a probe with and without tools) they are
  passed to it. Otherwise (SmolLM2's template ignores them) the documented fallback is used: the tools are
  described Hermes-style (`espl.envs.tools.hermes_tools_prompt`) at the end of the system message, or as
  the system message when there is none, and replies come back as `<tool_call>{json}</tool_call>` blocks
  that the env parses. `uses_tool_fallback` says which path a renderer takes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

from espl.types import Message

log = logging.getLogger(__name__)

_SENTINEL = "\u2063ESPL\u2063REPLY\u2063"  # invisible separators: never in a real conversation
_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "espl_probe_tool",
        "description": "probe",
        "parameters": {"type": "object", "properties": {"x": {"type": "string", "description": "x"}}},
    },
}


@dataclass(frozen=True)
class Rendered:
    """A rendered prompt: its text and its token ids."""

    text: str
    ids: tuple[int, ...]


class ChatRenderer:
    """Renders conversations with a tokenizer's chat template, incrementally and token-exactly."""

    def __init__(self, tokenizer: Any):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "tokenizer: has no chat template; give an instruct/chat model or set tokenizer.chat_template"
            )
        self.tokenizer = tokenizer
        probe: list[Message] = [{"role": "user", "content": "hi"}]
        self.native_tools = self._render(probe, [_PROBE_TOOL], True) != self._render(probe, None, True)
        if not self.native_tools:
            log.info("chat template ignores tools=: using the Hermes-in-system-message fallback")
        self.eot_text, self.eot_id = self._end_of_turn()

    @property
    def uses_tool_fallback(self) -> bool:
        return not self.native_tools

    # ---- rendering --------------------------------------------------------------------------------------
    def _render(self, messages: Sequence[Message], tools: Sequence[dict] | None, gen_prompt: bool) -> str:
        kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": gen_prompt}
        if tools:
            kwargs["tools"] = list(tools)
        return self.tokenizer.apply_chat_template([_clean(m) for m in messages], **kwargs)

    def _with_tools(self, messages: Sequence[Message], tools: Sequence[dict] | None) -> tuple[list, list | None]:
        """(messages, tools) to hand the template: tools as they are, or folded into the system message."""
        if not tools or self.native_tools:
            return list(messages), (list(tools) if tools else None)
        from espl.envs.tools import hermes_tools_prompt

        desc = hermes_tools_prompt(tools)
        msgs = list(messages)
        if msgs and msgs[0].get("role") == "system":
            msgs[0] = {**msgs[0], "content": f"{msgs[0].get('content') or ''}\n\n{desc}".lstrip()}
        else:
            msgs.insert(0, {"role": "system", "content": desc})
        return msgs, None

    def encode(self, text: str) -> tuple[int, ...]:
        # The template writes every special token itself; the tokenizer must not add a BOS of its own.
        return tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def start(self, messages: Sequence[Message], tools: Sequence[dict] | None = None) -> Rendered:
        """The first prompt of a conversation (with the generation prompt), as text and ids."""
        msgs, tl = self._with_tools(messages, tools)
        text = self._render(msgs, tl, True)
        return Rendered(text, self.encode(text))

    def continuation(
        self,
        history: Sequence[Message],
        new_messages: Sequence[Message],
        tools: Sequence[dict] | None = None,
        ended_with_eot: bool = True,
    ) -> Rendered:
        """The text and ids that follow the model's last generated token, up to the next generation prompt.

        `history` ends with the assistant reply the model just generated (its content is not used: the
        model's own tokens stand for it). `ended_with_eot` is True when the generated ids end with the
        template's end-of-turn token (a reply cut by the token budget does not, so the template's own
        end-of-turn marker is inserted).
        """
        if not history or history[-1].get("role") != "assistant":
            raise ValueError("history: must end with the assistant reply that was just generated")
        msgs, tl = self._with_tools(list(history[:-1]), tools)
        closed = msgs + [{"role": "assistant", "content": _SENTINEL}]
        full = self._render(closed + list(new_messages), tl, True)
        head = self._render(closed, tl, False)
        cut = head.rfind(_SENTINEL)
        if cut < 0 or not full.startswith(head[:cut + len(_SENTINEL)]):
            raise ValueError(
                "chat template: rendering is not incremental (the earlier turns render differently once new "
                "messages follow), so token-exact multi-turn prompts cannot be built with this template"
            )
        suffix = full[cut + len(_SENTINEL):]
        if ended_with_eot and self.eot_text and suffix.startswith(self.eot_text):
            suffix = suffix[len(self.eot_text):]
        return Rendered(suffix, self.encode(suffix))

    def _end_of_turn(self) -> tuple[str, int | None]:
        """The template's end-of-turn special token after an assistant reply (`<|im_end|>` for ChatML)."""
        msgs: list[Message] = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}]
        text = self._render(msgs, None, False)
        after = text[text.rfind(_SENTINEL) + len(_SENTINEL):]
        ids = self.encode(after) if after else ()
        if ids and ids[0] in set(self.tokenizer.all_special_ids):
            first = self.tokenizer.convert_ids_to_tokens(ids[0])
            if after.startswith(first):
                return first, ids[0]
        return "", self.tokenizer.eos_token_id


def _clean(m: Message) -> dict[str, Any]:
    # Templates concatenate `message['content']`: None (an assistant turn with only tool calls) would crash.
    d = dict(m)
    if d.get("content") is None:
        d["content"] = ""
    return d


# `TokenPolicy` (a Policy that takes token ids and has a `renderer`) lives with the other capabilities.
from espl.agents.policy import TokenPolicy  # noqa: E402,F401
