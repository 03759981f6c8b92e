"""Prompt templates.

``r1_zero`` is the DeepSeek-R1-Zero training template (the model answers after "Assistant:" and is asked for
``<think> ... </think> <answer> ... </answer>``). ``chat`` is a plain chat-style layout for the later R1
stages (cold-start SFT, reasoning RL with language consistency); it prefills ``<think>`` so the response
starts inside the reasoning (score it with ``rewards.format.think_prefilled = true``). ``chat_plain`` is the
same without the prefill.

Use :func:`render`; :data:`TEMPLATES` lists the names.
"""
from __future__ import annotations

R1_ZERO = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the "
    "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
    "User: {prompt}. Assistant:"
)

CHAT_SYSTEM = (
    "You are a helpful assistant. Think step by step inside <think> </think>, then give the final answer "
    "inside <answer> </answer>."
)

CHAT = "<|system|>\n" + CHAT_SYSTEM + "\n<|user|>\n{prompt}\n<|assistant|>\n<think>\n"
CHAT_PLAIN = "<|system|>\n" + CHAT_SYSTEM + "\n<|user|>\n{prompt}\n<|assistant|>\n"

TEMPLATES: dict[str, str] = {"r1_zero": R1_ZERO, "chat": CHAT, "chat_plain": CHAT_PLAIN}

# Templates whose rendered prompt ends with "<think>": the response continues the reasoning block.
PREFILLS_THINK = frozenset({"chat"})


def render(template_name: str, prompt: str) -> str:
    """The full prompt text for ``prompt`` in the named template.

    The prompt is inserted verbatim (braces in it are not format fields).
    """
    try:
        template = TEMPLATES[template_name]
    except KeyError:
        raise KeyError(f"unknown template {template_name!r}; expected one of {', '.join(sorted(TEMPLATES))}") from None
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    head, tail = template.split("{prompt}")
    return head + prompt + tail


class PromptRenderer:
    """One template bound to a tokenizer: renders a question into the prompt text and its token ids.

    ``prompt`` is a question string or a list of chat messages (``{"role", "content"}``; an optional
    leading system turn). The built-in templates take a string; ``hf_chat`` (the tokenizer's own chat
    template) takes either. :attr:`prefills_think` says whether the rendered prompt ends inside an
    open ``<think>`` block (the format and language rewards read it).
    """

    def __init__(self, template: str, tokenizer, system_prompt=None, think_prefill: bool = False):
        if template not in TEMPLATES:
            raise KeyError(f"unknown template {template!r}; expected one of {', '.join(sorted(TEMPLATES))}")
        self.template, self.tok = template, tokenizer
        self.system_prompt, self.think_prefill = system_prompt, think_prefill

    @property
    def prefills_think(self) -> bool:
        return self.template in PREFILLS_THINK

    def render(self, prompt) -> tuple[str, list]:
        if not isinstance(prompt, str):
            raise TypeError(f"template {self.template!r} takes a question string, got {type(prompt).__name__}")
        text = render(self.template, prompt)
        return text, list(self.tok.encode(text))


__all__ = ["render", "PromptRenderer", "TEMPLATES", "R1_ZERO", "CHAT", "CHAT_PLAIN", "PREFILLS_THINK"]
