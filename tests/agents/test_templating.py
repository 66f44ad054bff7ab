"""Token-exact multi-turn prompts for two real chat templates (SmolLM2's and Qwen2.5's, from the packaged
GGUFs): prompt k+1 = prompt k + generated ids + the suffix for the new messages, and with a canonically
tokenised reply that equals the whole conversation rendered and tokenised at once."""

from __future__ import annotations

import json

import pytest

from espl.agents.templating import ChatRenderer

TOOLS = [{"type": "function", "function": {
    "name": "calculator", "description": "Evaluate an arithmetic expression.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string", "description": "e.g. 2*3"}},
                   "required": ["expression"]}}}]


def multi_turn(renderer: ChatRenderer, first, turns, tools=None):
    """Simulate a rollout: each turn's reply tokenised + end-of-turn as if the model had sampled it."""
    tok = renderer.tokenizer
    start = renderer.start(first, tools)
    ids = list(start.ids)
    history = list(first)
    for reply, new in turns:
        gen = list(renderer.encode(reply)) + [renderer.eot_id]
        ids += gen
        history.append({"role": "assistant", "content": reply})
        cont = renderer.continuation(history, new, tools, ended_with_eot=True)
        ids += cont.ids
        history += new
    return start, ids, history, tok


CASES = [
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
     [("It is 5.", [{"role": "user", "content": "Wrong, try again."}]),
      ("Then 4.", [{"role": "user", "content": "Good. And 3*3?"}])]),
    ([{"role": "user", "content": "Name a prime."}],
     [("  9 (nine)\n", [{"role": "user", "content": "9 is not prime."}])]),
]


@pytest.mark.parametrize("which", ["smol", "qwen"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_incremental_prompt_equals_full_render(which, case, request):
    tok = request.getfixturevalue("smol_tokenizer" if which == "smol" else "qwen_tokenizer")
    r = ChatRenderer(tok)
    first, turns = CASES[case]
    _, ids, history, tok = multi_turn(r, first, turns)
    full = tok.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    assert tok.decode(ids) == full
    if case == 0:  # replies that tokenise the same alone and in context: the very ids of the full render
        assert ids == list(r.encode(full))


def test_retokenising_the_text_would_drift(smol_tokenizer):
    # "\n" (end of the generation prompt) then a reply starting with spaces: BPE merges "\n  " when the
    # whole conversation is tokenised at once, but the model saw "\n" and sampled "  9" after it.
    r = ChatRenderer(smol_tokenizer)
    first, turns = CASES[1]
    _, ids, history, tok = multi_turn(r, first, turns)
    full = tok.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    assert tok.decode(ids) == full and ids != list(r.encode(full))


def test_qwen_default_system_prompt_is_in_the_rendered_prompt(qwen_tokenizer):
    r = ChatRenderer(qwen_tokenizer)
    start = r.start([{"role": "user", "content": "hi"}])
    assert "You are Qwen, created by Alibaba Cloud" in start.text  # what "no system prompt" really means
    assert r.native_tools and not r.uses_tool_fallback


def test_qwen_tool_turns_are_token_exact(qwen_tokenizer):
    r = ChatRenderer(qwen_tokenizer)
    call = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "6*7"}}\n</tool_call>'
    first = [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "6*7?"}]
    tool_msgs = [{"role": "tool", "tool_call_id": "call_0", "name": "calculator", "content": "42"},
                 {"role": "tool", "tool_call_id": "call_1", "name": "calculator", "content": "43"}]
    start, ids, history, tok = multi_turn(r, first, [(call, tool_msgs)], tools=TOOLS)
    assert "# Tools" in start.text and '"calculator"' in start.text
    text = tok.decode(ids)
    assert text.endswith("<|im_start|>user\n<tool_response>\n42\n</tool_response>\n<tool_response>\n43\n"
                         "</tool_response><|im_end|>\n<|im_start|>assistant\n")
    full = tok.apply_chat_template(history, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert ids == list(r.encode(full))


def test_smollm2_tools_fallback_describes_tools_in_the_system_message(smol_tokenizer):
    r = ChatRenderer(smol_tokenizer)
    assert r.uses_tool_fallback  # SmolLM2's template ignores tools=
    with_sys = r.start([{"role": "system", "content": "Be exact."}, {"role": "user", "content": "6*7?"}], TOOLS)
    assert with_sys.text.startswith("<|im_start|>system\nBe exact.\n\n# Tools")
    assert json.dumps(TOOLS[0]) in with_sys.text and "<tool_call>" in with_sys.text
    no_sys = r.start([{"role": "user", "content": "6*7?"}], TOOLS)
    assert no_sys.text.startswith("<|im_start|>system\n# Tools")
    # later turns keep the same system message: the suffix after a reply holds only the new messages
    _, ids, history, tok = multi_turn(r, [{"role": "user", "content": "6*7?"}],
                                      [("<tool_call>{}</tool_call>", [{"role": "tool", "content": "42"}])], TOOLS)
    assert tok.decode(ids).count("# Tools") == 1
    assert tok.decode(ids).endswith("<|im_start|>tool\n42<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("which", ["smol", "qwen"])
def test_reply_cut_by_the_budget_gets_the_end_of_turn_marker(which, request):
    tok = request.getfixturevalue("smol_tokenizer" if which == "smol" else "qwen_tokenizer")
    r = ChatRenderer(tok)
    hist = [{"role": "user", "content": "Count."}, {"role": "assistant", "content": "1 2 3"}]
    cut = r.continuation(hist, [{"role": "user", "content": "go on"}], ended_with_eot=False)
    done = r.continuation(hist, [{"role": "user", "content": "go on"}], ended_with_eot=True)
    assert cut.ids[0] == r.eot_id and cut.ids[1:] == done.ids


def test_generated_ids_are_kept_not_retokenised(smol_tokenizer):
    r = ChatRenderer(smol_tokenizer)
    first = [{"role": "user", "content": "Say 1234."}]
    start = r.start(first)
    # a non-canonical split of "1234" as a sampler may produce it: one id per character
    gen = [i for ch in "1234" for i in r.encode(ch)] + [r.eot_id]
    assert gen[:-1] != list(r.encode("1234")) or len(r.encode("1234")) == 4
    hist = first + [{"role": "assistant", "content": "1234"}]
    nxt = list(start.ids) + gen + list(r.continuation(hist, [{"role": "user", "content": "ok"}]).ids)
    assert nxt[len(start.ids): len(start.ids) + len(gen)] == gen
