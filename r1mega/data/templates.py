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


HF_CHAT = "hf_chat"
TEMPLATE_NAMES = tuple(sorted(TEMPLATES)) + (HF_CHAT,)
"""Every value ``data.template`` takes: the built-in templates and ``hf_chat`` (the tokenizer's own chat template)."""


class PromptRenderer:
    """One template bound to a tokenizer: renders a question into the prompt text and its token ids.

    ``prompt`` is a question string or a list of chat messages (``{"role", "content"}``; an optional
    leading system turn). The built-in templates take a string (encoded with the tokenizer's special
    tokens, i.e. BOS); ``hf_chat`` (the tokenizer's own chat template, ``apply_chat_template`` with
    the generation prompt) takes either, adds ``system_prompt`` as a system turn unless the messages
    have one, and appends ``<think>\\n`` when ``think_prefill`` (unless the template's generation
    prompt already ends with ``<think>``); its ids are exactly transformers'. :attr:`prefills_think`
    says whether the rendered prompt ends inside an open ``<think>`` block (the format and language
    rewards read it, see :func:`rewards_for_template`).
    """

    def __init__(self, template: str, tokenizer, system_prompt=None, think_prefill: bool = False):
        if template not in TEMPLATE_NAMES:
            raise KeyError(f"unknown template {template!r}; expected one of {', '.join(TEMPLATE_NAMES)}")
        self.template, self.tok = template, tokenizer
        self.system_prompt, self.think_prefill = system_prompt, bool(think_prefill)
        self._template_think = False
        self._frame = None  # (text before, text after) the question, see is_rendered
        if template == HF_CHAT:
            from r1mega.data import chat

            chat.require_chat_template(tokenizer)
            self._template_think = chat.template_prefills_think(tokenizer)
        elif system_prompt or think_prefill:
            raise ValueError(f"system_prompt and think_prefill apply to template {HF_CHAT!r} only; template "
                             f"{template!r} has its own text (use 'chat' for a think prefill)")

    @property
    def prefills_think(self) -> bool:
        if self.template == HF_CHAT:
            return self.think_prefill or self._template_think
        return self.template in PREFILLS_THINK

    def render(self, prompt) -> tuple[str, list]:
        if self.template != HF_CHAT:
            if not isinstance(prompt, str):
                raise TypeError(f"template {self.template!r} takes a question string, got {type(prompt).__name__}")
            text = render(self.template, prompt)
            return text, list(self.tok.encode(text))
        from r1mega.data import chat

        text = chat.render_text(self.tok, chat.as_messages(prompt, self.system_prompt), True)
        if self.think_prefill and not self._template_think:
            text += "<think>\n"
        return text, chat.encode_rendered(self.tok, text)

    def is_rendered(self, text: str) -> bool:
        """Whether ``text`` is already a prompt of this template (its fixed text before and after the
        question), e.g. a prompt rejection sampling wrote; a bare question is not."""
        if self._frame is None:
            probe = "\x00r1mega-question\x00"
            self._frame = tuple(self.render(probe)[0].split(probe))
        head, tail = self._frame
        return len(text) >= len(head) + len(tail) and text.startswith(head) and text.endswith(tail)

    def end_of_turn_id(self):
        """The token that ends a response: the chat template's end-of-turn token (hf_chat, when it has one),
        else the tokenizer's EOS."""
        if self.template == HF_CHAT:
            from r1mega.data import chat

            eot = chat.end_of_turn_id(self.tok)
            if eot is not None:
                return eot
        return self.tok.eos_token_id

    def encode_rendered(self, text: str) -> list:
        """The ids of text this template already rendered (e.g. a prompt written by rejection sampling)."""
        if self.template == HF_CHAT:
            from r1mega.data import chat

            return chat.encode_rendered(self.tok, text)
        return list(self.tok.encode(text))

    def stop_token_ids(self) -> tuple:
        """Token ids generation stops on: the EOS id(s) of generation_config.json beside the tokenizer (int
        or list), else the tokenizer's EOS; with hf_chat also the template's end-of-turn token."""
        from r1mega.data import chat

        return chat.stop_token_ids(self.tok, chat_template=self.template == HF_CHAT)


def renderer_for(data_cfg, tokenizer) -> PromptRenderer:
    """The stage's renderer from its ``data`` config (template, system_prompt, think_prefill)."""
    return PromptRenderer(data_cfg.template, tokenizer, getattr(data_cfg, "system_prompt", None),
                          getattr(data_cfg, "think_prefill", False))


def rewards_for_template(rewards_cfg, renderer: PromptRenderer):
    """``rewards_cfg`` with ``format.think_prefilled`` derived from the renderer's template. Setting it by
    hand is allowed only when it agrees (a contradiction is a ConfigError naming both)."""
    import dataclasses

    from r1mega.config.base import ConfigError

    derived = renderer.prefills_think
    fmt = rewards_cfg.format
    if fmt.think_prefilled and not derived:
        raise ConfigError("rewards.format.think_prefilled", f"is true, but the prompts of template {renderer.template!r} "
                          "do not end with <think> (it is derived from the template: leave it unset)")
    return dataclasses.replace(rewards_cfg, format=dataclasses.replace(fmt, think_prefilled=derived))


__all__ = ["render", "PromptRenderer", "renderer_for", "rewards_for_template", "TEMPLATES", "TEMPLATE_NAMES", "HF_CHAT", "R1_ZERO", "CHAT", "CHAT_PLAIN", "PREFILLS_THINK"]
