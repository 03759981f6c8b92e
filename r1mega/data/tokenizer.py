"""The project tokenizer: a small byte-level BPE trained locally on our own corpus.

Properties (all tested in tests/data/test_tokenizer.py):

- Byte-level BPE (the 256 byte symbols are always in the vocabulary), so *any* text encodes and
  ``decode(encode(text)) == text`` exactly, spaces and newlines included (no normalizer, no
  prefix space, no clean-up of spaces on decode).
- Every digit is its own token (digits are split off before BPE), which arithmetic needs.
- ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` are single, *non-special* added tokens:
  text containing them encodes them as one token each, and ``decode(..., skip_special_tokens=True)``
  (vLLM's default) keeps them.
- Each non-ASCII character of the corpus (the Chinese step words, see
  ``r1mega.data.tasks.base.STEP_WORDS``) is one added token, so the vocabulary covers exactly the
  CJK characters we use.
- Special tokens: ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2. Encoding adds ``<bos>`` in front
  (``add_special_tokens=True``, as vLLM does for prompts); training documents end with
  ``<eos>``, which the packer appends.
- The vocabulary size is exactly ``vocab_size`` (a multiple of 64): unused ``<|unused_N|>``
  special tokens fill whatever BPE did not.
- Deterministic: the same corpus and arguments give a byte-identical ``tokenizer.json``.

Saved in Hugging Face format (``tokenizer.json``, ``tokenizer_config.json``,
``special_tokens_map.json``); ``transformers.AutoTokenizer.from_pretrained(dir)`` and vLLM
(``tokenizer=dir``) load it.
"""
from __future__ import annotations

import collections
import functools
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Iterable, Optional, Union

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from .tasks import zh_characters
from .tasks.base import TAGS

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, BOS, EOS)
UNUSED = "<|unused_{}|>"
DEFAULT_VOCAB_SIZE = 512
DEFAULT_CORPUS_DOCS = 4000
TOKENIZER_VERSION = 1  # bump when the recipe changes (part of the default cache key)
FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class TokenizerBuildError(ValueError):
    pass


def tokenizer_corpus(n_docs: int = DEFAULT_CORPUS_DOCS, seed: int = 0) -> Iterable[str]:
    """The default training text: ``n_docs`` documents of the pretraining mix plus the fixed
    phrasings of every task (so none of their words is left to chance)."""
    from .corpus import R1_ZERO_TEMPLATE, CorpusConfig, iter_corpus
    from .tasks import arith, nonreasoning

    yield R1_ZERO_TEMPLATE
    yield from (p.format(e="1+2") for p in arith.PHRASINGS)
    yield " ".join(nonreasoning.WORDS)
    yield from iter_corpus(CorpusConfig(seed=seed), n=n_docs)


def _extra_chars(counts: collections.Counter, max_extra_chars: int) -> list[str]:
    """The non-ASCII characters to add as single tokens: our Chinese step words, plus the most
    frequent other non-ASCII characters of the corpus (seen at least twice), capped.

    Characters that the byte-level alphabet uses as byte symbols (Latin-1 letters such as 'é',
    'ñ') are left to BPE: as added tokens the byte-level decoder would read them as single bytes.
    """
    byte_symbols = set(pre_tokenizers.ByteLevel.alphabet())
    chars = set(zh_characters())
    assert not chars & byte_symbols
    others = [c for c, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
              if n >= 2 and c not in chars and c not in byte_symbols]
    chars.update(others[:max(0, max_extra_chars - len(chars))])
    return sorted(chars)


def build_tokenizer(out_dir: Union[str, os.PathLike], corpus_iter: Optional[Iterable[str]] = None,
                    vocab_size: int = DEFAULT_VOCAB_SIZE, seed: int = 0, min_frequency: int = 2,
                    max_extra_chars: int = 128, model_max_length: int = 4096) -> Path:
    """Train the tokenizer on ``corpus_iter`` (default: :func:`tokenizer_corpus` for ``seed``)
    and save it in Hugging Face format under ``out_dir``. Returns ``out_dir``.

    ``vocab_size`` must be a multiple of 64 and leave room for the 256 byte symbols, the special
    tokens, the tags and the added characters.
    """
    if not isinstance(vocab_size, int) or vocab_size <= 0 or vocab_size % 64:
        raise TokenizerBuildError(f"vocab_size must be a positive multiple of 64, got {vocab_size!r}")
    texts = list(tokenizer_corpus(seed=seed) if corpus_iter is None else corpus_iter)
    if not texts:
        raise TokenizerBuildError("the tokenizer corpus is empty")

    counts = collections.Counter(c for t in texts for c in t if ord(c) > 127)
    extra = _extra_chars(counts, max_extra_chars)
    added = list(TAGS) + extra
    # BPE never sees the added tokens: the text is cut at them, as encoding does.
    cut = re.compile("|".join(re.escape(t) for t in sorted(added, key=len, reverse=True)))
    pieces = [p for t in texts for p in cut.split(t) if p]

    n_fixed = len(SPECIAL_TOKENS) + 256 + len(added)
    if n_fixed > vocab_size:
        raise TokenizerBuildError(f"vocab_size {vocab_size} is too small: {n_fixed} tokens are fixed "
                                  f"(specials, 256 bytes, {len(TAGS)} tags, {len(extra)} characters)")

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\d"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(added), min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(pieces, trainer=trainer, length=len(pieces))
    tok.add_tokens([AddedToken(t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=False)
                    for t in added])
    n_unused = vocab_size - tok.get_vocab_size(with_added_tokens=True)
    if n_unused < 0:
        raise TokenizerBuildError(f"internal: vocabulary overshot {vocab_size} by {-n_unused}")
    tok.add_special_tokens([AddedToken(UNUSED.format(i), normalized=False, special=True) for i in range(n_unused)])
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B:1",
                                                       special_tokens=[(BOS, bos_id)])
    assert tok.get_vocab_size(with_added_tokens=True) == vocab_size
    return save_tokenizer(tok, out_dir, model_max_length=model_max_length)


def save_tokenizer(tok: Tokenizer, out_dir: Union[str, os.PathLike], model_max_length: int = 4096) -> Path:
    """Write ``tok`` as tokenizer.json + tokenizer_config.json + special_tokens_map.json (deterministic)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(tok.to_str(pretty=True), encoding="utf-8")
    added = {str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                      "single_word": t.single_word, "special": t.special}
             for i, t in sorted(tok.get_added_tokens_decoder().items())}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": None,
        "add_bos_token": True, "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "padding_side": "right",
        "added_tokens_decoder": added,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    smap = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
    (out / "special_tokens_map.json").write_text(json.dumps(smap, indent=2) + "\n", encoding="utf-8")
    return out


def _tokenizer_dir(path: Union[str, os.PathLike]) -> Path:
    p = Path(path)
    if p.is_file() and p.name.endswith(".json"):
        p = p.parent
    if not (p / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {p} (build one with r1mega.data.tokenizer.build_tokenizer)")
    return p


def run_tokenizer_dir(data_cfg) -> Path:
    """The tokenizer directory a run uses: ``data.tokenizer_path``, or the built-in tokenizer of
    ``data.tokenizer_vocab_size`` tokens (:func:`default_tokenizer_dir`)."""
    if data_cfg.tokenizer_path:
        return _tokenizer_dir(data_cfg.tokenizer_path)
    return default_tokenizer_dir(vocab_size=data_cfg.tokenizer_vocab_size)


def load_tokenizer(path: Union[str, os.PathLike, None] = None):
    """A ``transformers`` fast tokenizer from a directory or its tokenizer.json (``None`` = the
    default tokenizer, built on first use; see :func:`default_tokenizer_dir`)."""
    from transformers import AutoTokenizer

    d = default_tokenizer_dir() if path is None else _tokenizer_dir(path)
    return AutoTokenizer.from_pretrained(str(d))


def save_tokenizer_copy(tok, src_dir: Union[str, os.PathLike], out_dir: Union[str, os.PathLike]) -> Path:
    """``tok.save_pretrained(out_dir)`` plus the ``generation_config.json`` of ``src_dir`` (its EOS ids are the
    stop tokens, see :func:`r1mega.data.chat.stop_token_ids`). The chat template travels with the
    tokenizer files (transformers writes it as chat_template.jinja)."""
    import shutil

    out = Path(out_dir)
    tok.save_pretrained(str(out))
    gen = Path(src_dir) / "generation_config.json"
    if gen.is_file():
        shutil.copyfile(gen, out / "generation_config.json")
    return out


def tokenizer_fingerprint(path: Union[str, os.PathLike]) -> Optional[str]:
    """What makes two tokenizers the same for a model: a hash of the token -> id mapping (added tokens
    included) and the BPE merges of ``tokenizer.json`` (a directory or the file), else of the bytes of
    ``tokenizer.model`` (SentencePiece); None when neither is there. Two tokenizers of the same size with
    other tokens or ids differ; a ``save_pretrained`` copy of one (another serialisation, chat template,
    special-token settings) does not."""
    p = Path(path)
    d = p.parent if p.is_file() else p
    if (d / "tokenizer.json").is_file():
        t = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
        model = t.get("model") or {}
        vocab = dict(model.get("vocab") or {}) if isinstance(model.get("vocab"), dict) else \
            {str(piece[0]): i for i, piece in enumerate(model.get("vocab") or [])}  # (Unigram: [piece, score] list)
        vocab.update({a["content"]: a["id"] for a in t.get("added_tokens") or []})
        merges = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in model.get("merges") or []]
        blob = json.dumps({"type": model.get("type"), "vocab": sorted(vocab.items(), key=lambda kv: (kv[1], kv[0])),
                           "merges": merges}, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()
    if (d / "tokenizer.model").is_file():
        return hashlib.sha256((d / "tokenizer.model").read_bytes()).hexdigest()
    return None


def load_raw_tokenizer(path: Union[str, os.PathLike, None] = None) -> Tokenizer:
    """The plain ``tokenizers.Tokenizer`` (fast to load, no transformers import)."""
    d = default_tokenizer_dir() if path is None else _tokenizer_dir(path)
    return Tokenizer.from_file(str(d / "tokenizer.json"))


@functools.lru_cache(maxsize=None)
def corpus_fingerprint(seed: int = 0, n_docs: int = 200) -> str:
    """Hash of the start of the tokenizer's training text: part of the cache key, so a change of the
    corpus recipe (which changes the trained merges) never reuses a tokenizer built from the old one."""
    h = hashlib.sha256(zh_characters().encode())  # the added characters too (a new Chinese text adds some)
    for doc in tokenizer_corpus(n_docs, seed):
        h.update(doc.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def default_tokenizer_dir(cache_dir: Union[str, os.PathLike, None] = None, vocab_size: int = DEFAULT_VOCAB_SIZE,
                          seed: int = 0) -> Path:
    """The default tokenizer's directory, built (in seconds) on first use.

    Location: ``cache_dir`` or ``$R1MEGA_CACHE`` or ``~/.cache/r1mega``, under a name keyed by the
    recipe version, vocabulary size and seed. Built into a temporary directory and renamed, so
    concurrent processes do not see half-written files.
    """
    root = Path(cache_dir or os.environ.get("R1MEGA_CACHE") or Path.home() / ".cache" / "r1mega")
    key = hashlib.sha256(f"v{TOKENIZER_VERSION}:{vocab_size}:{seed}:{corpus_fingerprint(seed)}".encode()).hexdigest()[:10]
    d = root / f"tokenizer-v{TOKENIZER_VERSION}-{vocab_size}-s{seed}-{key}"
    if all((d / f).is_file() for f in FILES):
        return d
    import shutil

    tmp = root / f".{d.name}.{os.getpid()}.tmp"
    build_tokenizer(tmp, vocab_size=vocab_size, seed=seed)
    if d.exists() and not all((d / f).is_file() for f in FILES):
        shutil.rmtree(d, ignore_errors=True)  # a leftover from an interrupted copy
    try:
        os.replace(tmp, d)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
        if not all((d / f).is_file() for f in FILES):
            raise
    return d
