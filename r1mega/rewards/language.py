"""Language-consistency reward (DeepSeek-R1 stage 2): the share of chain-of-thought units written in the
target language.

    reward = target_units / (target_units + other_units)      (``empty_value`` when there are no units)

Units and neutrality are defined in :mod:`r1mega.rewards.scripts`: words of spaced scripts, single characters
of Han/kana/Thai...; numbers, punctuation, math, code and one-letter variables are neutral. A unit is in the
target language when its script is one of the target's scripts (``zh`` -> Han; ``ja`` -> Han + kana; ``en`` ->
Latin, ...).

Scripts cannot tell English from French. With ``use_langid`` the target-script text is split into sentences and
each sentence is classified by py3langid (its model ships inside the wheel: no download), restricted to
``langid_candidates`` + target; the target-script units of a sentence confidently classified as another
language count as other units. If py3langid is not installed the option raises at config time.

With ``target: prompt`` (the default) the target is each sample's prompt language (:func:`for_prompt`: the
``lang`` of the sample's metadata, ``prompt_default`` without one): a Chinese question asks for a Chinese
chain of thought, an English one for English.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Optional

from r1mega.config.rewards import LanguageRewardConfig
from r1mega.rewards.extract import reasoning_text
from r1mega.rewards.scripts import TARGET_SCRIPTS, iter_units, strip_neutral_spans

_SENTENCE_SPLIT = re.compile(r"(?<=[.!?;:。！？；])\s+|\n+|(?<=[。！？；])")
_identifier = None
_identifier_langs: Optional[tuple] = None


def for_prompt(cfg: LanguageRewardConfig, lang: Optional[str]) -> LanguageRewardConfig:
    """``cfg`` with target 'prompt' resolved to ``lang`` (a sample's prompt language; ``prompt_default`` when
    it is None or unknown); other targets are returned unchanged."""
    if cfg.target != "prompt":
        return cfg
    return dataclasses.replace(cfg, target=lang if lang in TARGET_SCRIPTS else cfg.prompt_default)


def target_scripts(cfg: LanguageRewardConfig) -> frozenset:
    if cfg.scripts:
        return frozenset(cfg.scripts)
    return TARGET_SCRIPTS[cfg.prompt_default if cfg.target == "prompt" else cfg.target]


def langid_available() -> bool:
    try:
        import py3langid  # noqa: F401
    except Exception:
        return False
    return True


def _langid(langs: tuple):
    """A py3langid identifier restricted to ``langs`` (loaded once per process, ~1 s)."""
    global _identifier, _identifier_langs
    if _identifier is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        _identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    if _identifier_langs != langs:
        known = set(_identifier.labels) if hasattr(_identifier, "labels") else set(langs)
        _identifier.set_languages([lang for lang in langs if lang in known])
        _identifier_langs = langs
    return _identifier


def unit_counts(text: str, cfg: LanguageRewardConfig) -> tuple[int, int]:
    """(target units, other units) of ``text`` (already the chain of thought)."""
    scripts = target_scripts(cfg)
    if not (cfg.use_langid and not cfg.scripts):
        target = other = 0
        for script, _ in iter_units(text):
            if script in scripts:
                target += 1
            else:
                other += 1
        return target, other
    cfg = for_prompt(cfg, None)
    langs = tuple(dict.fromkeys([cfg.target, *cfg.langid_candidates]))
    ident = _langid(langs)
    target = other = 0
    for sentence in _SENTENCE_SPLIT.split(strip_neutral_spans(text)):
        units = list(iter_units(sentence))
        if not units:
            continue
        in_script = [u for s, u in units if s in scripts]
        other += len(units) - len(in_script)
        if not in_script:
            continue
        lang, conf = ident.classify(" ".join(in_script))
        if lang != cfg.target and conf >= cfg.langid_min_confidence:
            other += len(in_script)
        else:
            target += len(in_script)
    return target, other


def language_consistency(response: str, cfg: LanguageRewardConfig, think_prefilled: bool = False) -> float:
    """Share of chain-of-thought units in the target language, in [0, 1]."""
    text = reasoning_text(response, cfg.scope, think_prefilled)
    target, other = unit_counts(text, cfg)
    total = target + other
    return cfg.empty_value if total == 0 else target / total


__all__ = ["language_consistency", "unit_counts", "target_scripts", "for_prompt", "langid_available"]
