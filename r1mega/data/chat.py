"""The tokenizer's own chat template (``data.template: hf_chat``): messages, token ids, stop tokens.

Rendering goes through ``tokenizer.apply_chat_template`` and the ids are what transformers itself
produces for the rendered text: ``encode(text, add_special_tokens=False)`` (the template writes
any BOS itself; encoding with special tokens would add a second one).

* :func:`as_messages`: a question string or a list of ``{"role", "content"}`` turns, checked, with
  an optional system turn.
* :func:`template_prefills_think`: the template's generation prompt already ends with ``<think>``
  (DeepSeek-R1's does), so the response starts inside the reasoning.
* :func:`stop_token_ids`: the ids generation stops on: ``generation_config.json``'s
  ``eos_token_id`` (int or list) next to the tokenizer, else the tokenizer's EOS, plus the
  template's end-of-turn token (ChatML's ``<|im_end|>``).
* :func:`conversation_ids_and_mask`: a whole conversation's ids and a 0/1 mask that is 1 on exactly
  the assistant turns' tokens (content and the end-of-turn token the template writes after it;
  not the role headers, not the user/system turns), found by rendering growing prefixes of the
  conversation and checking that each is a token-prefix of the next.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

ROLES = ("system", "user", "assistant")
THINK_OPEN = "<think>"
_PROBE = "r1mega-probe-7f3a"  # assistant content used to find the template's end-of-turn token


class ChatTemplateError(ValueError):
    """A chat template, or a conversation, that cannot be rendered as asked."""


def has_chat_template(tok) -> bool:
    return bool(getattr(tok, "chat_template", None))


def require_chat_template(tok) -> None:
    if not has_chat_template(tok):
        name = getattr(tok, "name_or_path", "") or type(tok).__name__
        raise ChatTemplateError(f"data.template 'hf_chat' needs a tokenizer with a chat template, but {name} has none "
                                "(tokenizer_config.json 'chat_template' or chat_template.jinja); use r1_zero/chat "
                                "or a tokenizer that ships one")


def as_messages(prompt, system_prompt: Optional[str] = None, where: str = "prompt") -> list[dict]:
    """``prompt`` as chat turns: a string is one user turn; a list is checked (roles system/user/assistant,
    string contents, a system turn only first). ``system_prompt`` is added first unless there is one."""
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, (list, tuple)) and prompt:
        messages = []
        for i, m in enumerate(prompt):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ChatTemplateError(f"{where}: message {i} must be an object with 'role' and 'content', got {m!r}")
            if m["role"] not in ROLES:
                raise ChatTemplateError(f"{where}: message {i} has role {m['role']!r}, expected one of {ROLES}")
            if not isinstance(m["content"], str):
                raise ChatTemplateError(f"{where}: message {i} content must be a string, "
                                        f"got {type(m['content']).__name__}")
            if m["role"] == "system" and i > 0:
                raise ChatTemplateError(f"{where}: message {i} is a system turn; only the first message may be one")
            messages.append({"role": m["role"], "content": m["content"]})
    else:
        raise ChatTemplateError(f"{where}: expected a question string or a non-empty list of messages, "
                                f"got {type(prompt).__name__}")
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def render_text(tok, messages: Sequence[dict], generation_prompt: bool) -> str:
    return tok.apply_chat_template(list(messages), add_generation_prompt=generation_prompt, tokenize=False)


def encode_rendered(tok, text: str) -> list[int]:
    """The ids of rendered template text, as ``apply_chat_template(tokenize=True)`` computes them."""
    return list(tok.encode(text, add_special_tokens=False))


def template_prefills_think(tok) -> bool:
    """Whether the template's generation prompt ends with ``<think>`` (whitespace after it allowed)."""
    text = render_text(tok, [{"role": "user", "content": "1+1?"}], True)
    return text.rstrip().endswith(THINK_OPEN)


def end_of_turn_id(tok) -> Optional[int]:
    """The added token the template writes right after an assistant turn's content (``<|im_end|>``,
    ``<｜end▁of▁sentence｜>``), or None when what follows is not one token of its own."""
    try:
        text = render_text(tok, [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": _PROBE}], False)
    except Exception:  # a template that refuses this shape (e.g. demands a system turn) has no probe-able end
        return None
    at = text.find(_PROBE)
    if at < 0:
        return None
    after = encode_rendered(tok, text[at + len(_PROBE):])
    added = getattr(tok, "added_tokens_decoder", {}) or {}
    return after[0] if after and after[0] in added else None


def generation_eos_ids(tok, directory=None) -> list[int]:
    """``eos_token_id`` of ``generation_config.json`` in ``directory`` (default: the directory the
    tokenizer was loaded from), an int or a list; else the tokenizer's EOS id (none: [])."""
    d = Path(directory if directory is not None else (getattr(tok, "name_or_path", "") or "."))
    gen = d / "generation_config.json"
    if gen.is_file():
        try:
            eos = json.loads(gen.read_text(encoding="utf-8")).get("eos_token_id")
        except (OSError, ValueError) as e:
            raise ChatTemplateError(f"{gen}: unreadable generation config ({e})") from None
        if isinstance(eos, int) and not isinstance(eos, bool):
            return [eos]
        if isinstance(eos, list) and eos and all(isinstance(x, int) and not isinstance(x, bool) for x in eos):
            return list(eos)
        if eos is not None:
            raise ChatTemplateError(f"{gen}: eos_token_id must be an int or a list of ints, got {eos!r}")
    eos = getattr(tok, "eos_token_id", None)
    return [eos] if eos is not None else []


def stop_token_ids(tok, chat_template: bool = False, directory=None) -> tuple:
    """The token ids generation stops on: the EOS id(s) (:func:`generation_eos_ids`), plus the chat
    template's end-of-turn token when ``chat_template``. Deduplicated, in that order."""
    ids = generation_eos_ids(tok, directory)
    if chat_template:
        eot = end_of_turn_id(tok)
        if eot is not None:
            ids.append(eot)
    return tuple(dict.fromkeys(ids))


def sample_messages(question, response: str, prefilled_think: bool) -> list[dict]:
    """A sampled answer as template-free SFT data: the question's turns (a string is one user turn; no system
    prompt of the sampling template is added) and the assistant turn as the model wrote it, think/answer tags
    included. ``prefilled_think``: the sampling prompt ended inside ``<think>`` (its template prefilled it), so
    ``response`` lacks the opening tag and gets it back (``<think>\\n``, as the prefills write it)."""
    content = f"{THINK_OPEN}\n{response}" if prefilled_think and not response.lstrip().startswith(THINK_OPEN) else response
    return as_messages(question) + [{"role": "assistant", "content": content}]


def strip_think_open(content: str) -> str:
    """An assistant turn as the continuation of a prompt that already ends inside ``<think>`` (a prefilling
    template): its leading ``<think>`` and the whitespace around it dropped (content without one: unchanged)."""
    body = content.lstrip()
    return body[len(THINK_OPEN):].lstrip() if body.startswith(THINK_OPEN) else content


def conversation_ids_and_mask(tok, messages: Sequence[dict], stop_ids: Sequence[int],
                              where: str = "conversation") -> tuple[list[int], list[int]]:
    """Ids of the whole conversation (``apply_chat_template`` without a generation prompt) and a mask
    that is 1 on the assistant turns' tokens: from the end of the generation prompt before each
    assistant turn to the last ``stop_ids`` token of that turn (inclusive; all of the turn when it
    has none). Raises ChatTemplateError naming ``where`` when a prefix of the conversation does not
    render to a token-prefix of the whole (the template rewrites earlier turns)."""
    messages = list(messages)
    if not any(m["role"] == "assistant" for m in messages):
        raise ChatTemplateError(f"{where}: no assistant turn to train on")
    first = next(i for i, m in enumerate(messages) if m["role"] != "system")
    if messages[first]["role"] != "user":
        raise ChatTemplateError(f"{where}: the conversation must start with a user turn (after an optional system turn)")
    ids = encode_rendered(tok, render_text(tok, messages, False))
    mask = [0] * len(ids)
    stops = set(stop_ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        head = encode_rendered(tok, render_text(tok, messages[:i], True))
        turn = encode_rendered(tok, render_text(tok, messages[:i + 1], False))
        for part, name in ((head, "the prompt before it (with the generation prompt)"), (turn, "the turn itself")):
            if ids[:len(part)] != part:
                raise ChatTemplateError(
                    f"{where}: the chat template is not prefix-stable at message {i} (assistant): {name} does not "
                    "render to a token-prefix of the whole conversation, so its loss tokens cannot be located")
        ends = [k for k in range(len(head), len(turn)) if ids[k] in stops]
        for k in range(len(head), ends[-1] + 1 if ends else len(turn)):
            mask[k] = 1
    return ids, mask


__all__ = ["ChatTemplateError", "as_messages", "render_text", "encode_rendered", "has_chat_template",
           "require_chat_template", "template_prefills_think", "end_of_turn_id", "generation_eos_ids",
           "stop_token_ids", "conversation_ids_and_mask", "sample_messages", "strip_think_open"]
