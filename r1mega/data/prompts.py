"""RL prompts from the built-in verifiable tasks: each iteration's prompts are a pure function of
(seed, iteration), so a resumed GRPO run sees exactly the prompts it would have seen."""
from __future__ import annotations

from dataclasses import dataclass, field

from r1mega.data.tasks import iter_problems
from r1mega.data.templates import PromptRenderer


@dataclass
class PromptItem:
    text: str  # the templated prompt
    ids: list  # its token ids
    gold: str
    task_type: str  # reward task type (math, mcq, code, gym)
    meta: dict = field(default_factory=dict)
    question: object = None  # the question before templating (a string or chat messages): what SFT data keeps

    def reward_metadata(self) -> dict:
        """What the rewards read from :attr:`meta` (RewardSample.metadata): lang; mcq choices; gym task + entry."""
        md = {k: self.meta[k] for k in ("choices", "gym_task", "entry") if k in self.meta}
        return {"lang": self.meta.get("lang", "en"), **md}


REASONING = ("arith", "word")
GENERAL_TASKS = ("nonreasoning",)  # helpfulness requests: task type 'general', scored by a reward model


class TaskPrompts:
    def __init__(self, tokenizer, tasks: list[str], difficulties: list[int], template: str = "r1_zero",
                 seed: int = 0, split: str = "train", general: bool = False, zh_fraction: float = 0.0,
                 zh_tasks=None, renderer=None):
        """``general=True`` also draws the non-reasoning requests named in ``tasks`` ('nonreasoning'), as task
        type 'general' (all-scenario RL); tasks are drawn uniformly. Without it only reasoning tasks are used.
        ``zh_fraction``: share of reasoning prompts (of the ``zh_tasks`` families; None: all) asked in Chinese;
        each item's ``meta['lang']`` is its question's language (the language reward's target 'prompt' reads it).
        ``renderer``: the :class:`~r1mega.data.templates.PromptRenderer` to build prompts with (default: ``template``
        bound to ``tokenizer``)."""
        names = [t for t in tasks if t in REASONING] or list(REASONING)
        if general:
            names += [t for t in tasks if t in GENERAL_TASKS]
        self.tok, self.template, self.seed, self.split = tokenizer, template, seed, split
        self.renderer = renderer or PromptRenderer(template, tokenizer)
        self.zh_fraction, self.zh_tasks = zh_fraction, zh_tasks
        self.tasks = {t: 1.0 for t in names}
        self.levels = {d: 1.0 for d in difficulties}

    def batch(self, iteration: int, n: int, offset: int = 0) -> list[PromptItem]:
        """``n`` prompts of ``iteration`` (``offset`` > 0 draws extra ones, e.g. for dynamic sampling refills)."""
        stream = iter_problems(self.tasks, self.levels, seed=hash((self.seed, iteration, offset)) & 0x7FFFFFFF,
                               split=self.split, zh_fraction=self.zh_fraction, zh_tasks=self.zh_tasks)
        out = []
        for p in stream:
            text, ids = self.renderer.render(p.prompt)
            out.append(PromptItem(text, ids, p.answer, "math" if p.task in REASONING else "general",
                                  {"id": p.id, "task": p.task, "difficulty": p.difficulty, "lang": p.lang}, p.prompt))
            if len(out) == n:
                return out
        return out
