"""The RL / rejection-sampling prompt stream over several sources, and its checkpointable position.

Global order (a pure function of the seed and the position):

* **source of draw i**: the source furthest behind its share, ``argmax_s(w_s * (i + 1) - drawn_s)`` (weights
  normalised; ties to the first listed). Every prefix of the stream holds each source within one draw of its
  weight's share (0.8/0.2 -> 4 reasoning prompts, then 1 general, repeated).
* **row of a file source's j-th draw**: epoch ``j // rows``, row ``perm_epoch[j % rows]``, where ``perm_epoch``
  is ``random.Random(f"{seed}:{source}:{epoch}").shuffle`` of the row indices. No row repeats within an epoch.
* **built-in tasks source**: its j-th draw is item ``j % 64`` of ``TaskPrompts.batch(j // 64, 64)``.

:class:`PromptMixture` keeps the position (``cursor``: prompts drawn so far). GRPO's dynamic sampling draws a
variable number per iteration, so the stage saves :meth:`PromptMixture.state` in its checkpoint and restores it:
a resumed run sees exactly the prompts of an uninterrupted one. Every rank holds the same mixture and draws the
same global list; the rollout engine splits it over the data-parallel replicas (disjoint shares).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Optional

from r1mega.data.prompts import PromptItem, TaskPrompts
from r1mega.data.sources import PromptRow, SourceSpec, gym_rows, heldout, load_rows, parse_sources

TASK_CHUNK = 64


@dataclass
class LoadedSource:
    spec: SourceSpec
    rows: Optional[list] = None      # PromptRow list (file, gym); None for the built-in tasks
    heldout: list = field(default_factory=list)  # rows kept out of training (the eval fallback)


def source_specs(data, role: str = "train") -> list:
    """(where, SourceSpec) of ``data.sources`` + ``data.train_paths`` (role train) or ``data.eval_sources`` +
    ``data.eval_paths`` (role eval); the paths are file sources with the default field names."""
    key, paths = ("sources", "train_paths") if role == "train" else ("eval_sources", "eval_paths")
    specs = [(f"data.{key}[{i}]", s) for i, s in enumerate(parse_sources(getattr(data, key, []), f"data.{key}"))]
    specs += [(f"data.{paths}[{i}]", SourceSpec(path=p)) for i, p in enumerate(getattr(data, paths))]
    return specs


def load_sources(data, resolve_path=None, role: str = "train", kinds=("file", "tasks", "gym")) -> list:
    """Read and check every file of the ``role`` sources of the given ``kinds`` (no tokenizer, no model): the
    :class:`LoadedSource` list, [] when none is configured. Training rows in the held-out split
    (``data.heldout_fraction``, only when no eval file is given) are set aside in ``heldout``."""
    frac = data.heldout_fraction if role == "train" and not has_eval_files(data) else 0.0
    out = []
    for where, s in source_specs(data, role):
        if s.kind not in kinds:
            continue
        if s.kind == "tasks":
            out.append(LoadedSource(s))
            continue
        rows = gym_rows(s, data.seed, where) if s.kind == "gym" else load_rows(s, where, resolve_path, data.template)
        held = [r for r in rows if s.kind == "file" and heldout(r, data.seed, frac)]
        keep = [r for r in rows if not (s.kind == "file" and heldout(r, data.seed, frac))]
        if not keep:
            from r1mega.config.base import ConfigError

            raise ConfigError(where, f"all {len(rows)} rows fell in the held-out split (data.heldout_fraction="
                                     f"{frac}); give data.eval_paths or lower heldout_fraction")
        out.append(LoadedSource(s, keep, held))
    return out


def has_eval_files(data) -> bool:
    return bool(getattr(data, "eval_paths", None) or getattr(data, "eval_sources", None))


class PromptMixture:
    """Prompts from several loaded sources in the global order of the module docstring."""

    def __init__(self, sources: list, renderer, seed: int, task_prompts=None):
        """``task_prompts``: a factory ``(tasks) -> TaskPrompts`` for the built-in tasks sources."""
        total = sum(s.spec.weight for s in sources)
        self.sources, self.renderer, self.seed = sources, renderer, seed
        self.weights = [s.spec.weight / total for s in sources]
        self.tasks = [task_prompts(s.spec.tasks) if s.rows is None else None for s in sources]
        self._perm: dict = {}
        self._chunk: dict = {}
        self.cursor, self.drawn = 0, [0] * len(sources)

    # ---------------------------------------------------------------- order
    def _next_source(self) -> int:
        i = self.cursor
        return max(range(len(self.sources)), key=lambda s: (self.weights[s] * (i + 1) - self.drawn[s], -s))

    def _row(self, s: int, j: int) -> PromptRow:
        rows = self.sources[s].rows
        epoch, k = divmod(j, len(rows))
        if self._perm.get(s, (None,))[0] != epoch:
            perm = list(range(len(rows)))
            random.Random(f"{self.seed}:{self.sources[s].spec.label}:{epoch}").shuffle(perm)
            self._perm[s] = (epoch, perm)
        return rows[self._perm[s][1][k]]

    def _item(self, s: int, j: int) -> PromptItem:
        if self.tasks[s] is not None:
            c, k = divmod(j, TASK_CHUNK)
            if self._chunk.get(s, (None,))[0] != c:
                self._chunk[s] = (c, self.tasks[s].batch(c, TASK_CHUNK))
            it = self._chunk[s][1][k]
            return PromptItem(it.text, it.ids, it.gold, it.task_type, {**it.meta, "source": self.sources[s].spec.label},
                              it.question)
        row = self._row(s, j)
        text, ids = self.renderer.render(row.prompt)
        return PromptItem(text, ids, row.gold, row.task_type, {"id": row.id, **row.meta}, row.prompt)

    # ----------------------------------------------------------------- draws
    def take(self, n: int) -> list[PromptItem]:
        """The next ``n`` prompts of the global order (advances the position)."""
        out = []
        for _ in range(n):
            s = self._next_source()
            out.append(self._item(s, self.drawn[s]))
            self.drawn[s] += 1
            self.cursor += 1
        return out

    def batch(self, iteration: int, n: int, offset: int = 0) -> list[PromptItem]:
        """:meth:`take` under :meth:`TaskPrompts.batch`'s signature: the position, not (iteration, offset),
        decides (save :meth:`state` with the checkpoint)."""
        return self.take(n)

    def state(self) -> dict:
        return {"cursor": self.cursor, "sources": [s.spec.label for s in self.sources]}

    def restore(self, state: Optional[dict]) -> None:
        """Back to the position of :meth:`state` (replays the source choices: no rows are rendered)."""
        if not state:
            return
        labels = [s.spec.label for s in self.sources]
        if state.get("sources") != labels:
            from r1mega.config.base import ConfigError

            raise ConfigError("data.sources", f"the checkpoint's prompt sources {state.get('sources')} differ from "
                                              f"the config's {labels}: resuming would not see the same prompts")
        self.cursor, self.drawn = 0, [0] * len(self.sources)
        for _ in range(int(state["cursor"])):
            self.drawn[self._next_source()] += 1
            self.cursor += 1


def make_renderer(data, tokenizer):
    from r1mega.data.templates import PromptRenderer

    return PromptRenderer(data.template, tokenizer, system_prompt=getattr(data, "system_prompt", None),
                          think_prefill=getattr(data, "think_prefill", False))


def make_prompts(data, tokenizer, loaded: list, seed: int, general: bool = False, renderer=None):
    """The prompt stream of a GRPO / rejection-sampling stage: :class:`TaskPrompts` over ``data.tasks`` when
    no source is configured (the draws of (seed, iteration, offset), as before sources existed), else a
    :class:`PromptMixture` over ``loaded`` (from :func:`load_sources`). ``renderer``: the stage's
    :class:`~r1mega.data.templates.PromptRenderer` (default :func:`make_renderer`)."""
    renderer = renderer or make_renderer(data, tokenizer)

    def tasks(names):
        return TaskPrompts(tokenizer, names or data.tasks, data.difficulties, data.template, seed=seed,
                           general=general, zh_fraction=data.zh_prompt_fraction, zh_tasks=data.zh_prompt_tasks,
                           renderer=renderer)

    if not loaded:
        return tasks(data.tasks)
    return PromptMixture(loaded, renderer, seed, task_prompts=tasks)


__all__ = ["PromptMixture", "LoadedSource", "load_sources", "make_prompts", "source_specs", "has_eval_files",
           "make_renderer"]
