"""Writing-script detection from ``unicodedata`` (no model): which script each letter belongs to, and
how text splits into countable units per script.

Units: scripts written without spaces between words (Han, Hiragana, Katakana, Thai, Lao, Khmer, Myanmar,
Tibetan) count one unit per character; every other script counts one unit per word (a maximal run of letters
of that script; combining marks continue the word). Digits, punctuation, symbols, spaces and math are neutral
(not units), and so are one-letter words of spaced scripts (``x``, ``n``, ``α``: variables).
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import lru_cache
from typing import Iterator, Optional

# First word(s) of unicodedata.name -> script name.
_NAME_PREFIX = {
    "LATIN": "Latin", "FULLWIDTH LATIN": "Latin", "CJK": "Han", "IDEOGRAPHIC": "Han", "KANGXI": "Han",
    "HIRAGANA": "Hiragana", "KATAKANA": "Katakana", "HALFWIDTH KATAKANA": "Katakana",
    "KATAKANA-HIRAGANA": "Katakana", "HANGUL": "Hangul", "HALFWIDTH HANGUL": "Hangul", "CYRILLIC": "Cyrillic",
    "GREEK": "Greek", "ARABIC": "Arabic", "HEBREW": "Hebrew", "DEVANAGARI": "Devanagari", "BENGALI": "Bengali",
    "GURMUKHI": "Gurmukhi", "GUJARATI": "Gujarati", "TAMIL": "Tamil", "TELUGU": "Telugu", "KANNADA": "Kannada",
    "MALAYALAM": "Malayalam", "SINHALA": "Sinhala", "THAI": "Thai", "LAO": "Lao", "KHMER": "Khmer",
    "MYANMAR": "Myanmar", "TIBETAN": "Tibetan", "GEORGIAN": "Georgian", "ARMENIAN": "Armenian",
    "ETHIOPIC": "Ethiopic", "SYRIAC": "Syriac", "THAANA": "Thaana", "MONGOLIAN": "Mongolian",
    "BOPOMOFO": "Bopomofo", "YI": "Yi",
}
KNOWN_SCRIPTS = frozenset(_NAME_PREFIX.values())
PER_CHARACTER_SCRIPTS = frozenset({"Han", "Hiragana", "Katakana", "Thai", "Lao", "Khmer", "Myanmar", "Tibetan",
                                   "Bopomofo", "Yi"})

_LATIN_LANGS = ("en fr de es it pt nl ca da sv no nb nn fi et lv lt pl cs sk sl hr hu ro tr id ms vi tl sw af sq "
                "eu gl ga cy is mt az uz")
TARGET_SCRIPTS: dict[str, frozenset] = {lang: frozenset({"Latin"}) for lang in _LATIN_LANGS.split()}
TARGET_SCRIPTS.update({
    "zh": frozenset({"Han"}), "ja": frozenset({"Han", "Hiragana", "Katakana"}), "ko": frozenset({"Hangul", "Han"}),
    "ru": frozenset({"Cyrillic"}), "uk": frozenset({"Cyrillic"}), "bg": frozenset({"Cyrillic"}),
    "sr": frozenset({"Cyrillic"}), "mk": frozenset({"Cyrillic"}), "be": frozenset({"Cyrillic"}),
    "kk": frozenset({"Cyrillic"}), "mn": frozenset({"Cyrillic"}), "el": frozenset({"Greek"}),
    "ar": frozenset({"Arabic"}), "fa": frozenset({"Arabic"}), "ur": frozenset({"Arabic"}),
    "he": frozenset({"Hebrew"}), "hi": frozenset({"Devanagari"}), "mr": frozenset({"Devanagari"}),
    "ne": frozenset({"Devanagari"}), "bn": frozenset({"Bengali"}), "pa": frozenset({"Gurmukhi"}),
    "gu": frozenset({"Gujarati"}), "ta": frozenset({"Tamil"}), "te": frozenset({"Telugu"}),
    "kn": frozenset({"Kannada"}), "ml": frozenset({"Malayalam"}), "si": frozenset({"Sinhala"}),
    "th": frozenset({"Thai"}), "lo": frozenset({"Lao"}), "km": frozenset({"Khmer"}), "my": frozenset({"Myanmar"}),
    "ka": frozenset({"Georgian"}), "hy": frozenset({"Armenian"}), "am": frozenset({"Ethiopic"}),
})

# Math and code are neutral: removed before counting (linear-time scan, see strip_neutral_spans).
_SPAN_START = re.compile(r"```|\$\$|\\\[|\\\(|\\[A-Za-z]+|</?[A-Za-z][A-Za-z0-9_-]*>|`|\$")
_SPAN_END = {"```": "```", "$$": "$$", "\\[": "\\]", "\\(": "\\)", "`": "`", "$": "$"}
_word_re = None


def _word_pattern() -> "re.Pattern":
    """Runs of letters and combining marks (stdlib re has no \\p{M}: the mark class is built once)."""
    global _word_re
    if _word_re is None:
        ranges, start, prev = [], None, None
        for cp in range(0x300, 0x20000):
            if unicodedata.category(chr(cp)).startswith("M"):
                if start is None:
                    start = cp
                elif cp != prev + 1:
                    ranges.append((start, prev))
                    start = cp
                prev = cp
        ranges.append((start, prev))
        marks = "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)
        _word_re = re.compile(f"(?:[^\\W\\d_]|[{marks}])+")
    return _word_re


@lru_cache(maxsize=65536)
def char_script(ch: str) -> Optional[str]:
    """Script of a letter (category L*), or None for anything else (digits, punctuation, marks, symbols)."""
    if not unicodedata.category(ch).startswith("L"):
        return None
    name = unicodedata.name(ch, "")
    if not name:
        return None
    first, _, rest = name.partition(" ")
    two = first + " " + rest.partition(" ")[0]
    return _NAME_PREFIX.get(two) or _NAME_PREFIX.get(first) or "Other"


def strip_neutral_spans(text: str) -> str:
    """Text with code (fenced, inline), LaTeX math ($..$, $$..$$, \\[..\\], \\(..\\)), LaTeX commands and
    <tags> (``<think>``, ``</answer>``) replaced by spaces. Linear time: an opener with no closer is kept as text and never searched again."""
    out: list[str] = []
    i = 0
    dead: set = set()
    for m in _SPAN_START.finditer(text):
        p = m.start()
        if p < i:
            continue
        tok = m.group(0)
        if tok not in _SPAN_END:  # a LaTeX command or a <tag>
            out.append(text[i:p])
            out.append(" ")
            i = m.end()
            continue
        if tok in dead:
            continue
        q = text.find(_SPAN_END[tok], m.end())
        if q < 0:
            dead.add(tok)
            continue
        if tok == "`" and "\n" in text[m.end():q]:
            continue  # not inline code
        out.append(text[i:p])
        out.append(" ")
        i = q + len(_SPAN_END[tok])
    out.append(text[i:])
    return "".join(out)


def iter_units(text: str) -> Iterator[tuple[str, str]]:
    """(script, unit text) for each countable unit of ``text`` (math/code removed first)."""
    for m in _word_pattern().finditer(strip_neutral_spans(text)):
        word = m.group(0)
        if word.isascii():
            if len(word) > 1:
                yield ("Latin", word)
            continue
        yield from _split_word(word)


def _split_word(word: str) -> Iterator[tuple[str, str]]:
    """Units of one run of letters/marks that may mix scripts."""
    cur: list[str] = []
    cur_script: Optional[str] = None
    letters = 0
    for ch in word:
        script = char_script(ch)
        if script is None:  # a combining mark continues the current word
            if cur:
                cur.append(ch)
            continue
        if script in PER_CHARACTER_SCRIPTS:
            if letters > 1:
                yield (cur_script, "".join(cur))
            cur, cur_script, letters = [], None, 0
            yield (script, ch)
            continue
        if script != cur_script:
            if letters > 1:
                yield (cur_script, "".join(cur))
            cur, cur_script, letters = [], script, 0
        cur.append(ch)
        letters += 1
    if letters > 1:
        yield (cur_script, "".join(cur))


def count_units(text: str) -> Counter:
    """Counter {script: number of units} of ``text``."""
    return Counter(script for script, _ in iter_units(text))


__all__ = ["char_script", "iter_units", "count_units", "strip_neutral_spans", "KNOWN_SCRIPTS",
           "PER_CHARACTER_SCRIPTS", "TARGET_SCRIPTS"]
