"""The local tokenizer: exact round-trips, single-token tags and digits, HF loading, determinism."""
import json

import pytest

from r1mega.data.corpus import CorpusConfig, iter_corpus
from r1mega.data.tasks import TAGS, generate_nonreasoning, generate_problems, zh_characters
from r1mega.data.tokenizer import (BOS, EOS, PAD, FILES, TokenizerBuildError, build_tokenizer, default_tokenizer_dir,
                                   load_raw_tokenizer, load_tokenizer)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer")


@pytest.fixture(scope="module")
def raw(tok_dir):
    return load_raw_tokenizer(tok_dir)


@pytest.fixture(scope="module")
def hf(tok_dir):
    return load_tokenizer(tok_dir)


def task_texts():
    texts = []
    for task in ("arith", "word"):
        for d in (1, 3, 5):
            for p in generate_problems(task, 5, seed=3, split="train", difficulty=d):
                texts += [p.prompt, p.solution("en"), p.solution("zh"), p.plain_solution("en"), p.plain_solution("zh")]
    for p in generate_nonreasoning(10, seed=3, difficulty=[1, 2, 3]):
        texts += [p.prompt, p.solution(), p.response]
    texts += list(iter_corpus(CorpusConfig(seed=5), n=200))
    texts += ["", " ", "  two  spaces ", "\n", "line1\nline2\n\n  indented\tTab\r\n", "<think></think><answer>7</answer>",
              "<think>\n</think>\n<answer> -12 </answer>", "unicode: é ü 你好 🙂 ∑", "0123456789", "007"]
    return texts


def test_files_and_size(tok_dir, raw):
    for f in FILES:
        assert (tok_dir / f).is_file(), f
    assert raw.get_vocab_size() == 512 and raw.get_vocab_size() % 64 == 0
    assert [raw.token_to_id(t) for t in (PAD, BOS, EOS)] == [0, 1, 2]


def test_round_trip_exact(raw, hf):
    for text in task_texts():
        ids = raw.encode(text).ids
        assert ids[:1] == [raw.token_to_id(BOS)]
        assert raw.decode(ids, skip_special_tokens=True) == text
        assert hf.decode(hf(text)["input_ids"], skip_special_tokens=True) == text
        assert hf(text)["input_ids"] == ids


def test_tags_are_single_tokens(raw, hf):
    for tag in TAGS:
        assert raw.encode(tag, add_special_tokens=False).tokens == [tag]
        assert hf.convert_ids_to_tokens(hf(tag, add_special_tokens=False)["input_ids"]) == [tag]
    sol = generate_problems("arith", 1, seed=0, difficulty=3)[0].solution()
    tokens = raw.encode(sol, add_special_tokens=False).tokens
    for tag in TAGS:
        assert tokens.count(tag) == 1
    # tags are not special: skip_special_tokens (vLLM's default) keeps them, but drops <bos>/<eos>
    ids = hf(sol)["input_ids"] + [hf.eos_token_id]
    assert hf.decode(ids, skip_special_tokens=True) == sol
    assert "<think>x</think>" == hf.decode(hf("<think>x</think>")["input_ids"], skip_special_tokens=True)


def test_digits_one_per_token(raw):
    vocab = raw.get_vocab()
    digit_tokens = [t for t in vocab if any(c in "0123456789" for c in t) and not t.startswith("<|unused")]
    assert sorted(digit_tokens) == list("0123456789")
    enc = raw.encode("Tom has 1234567890 apples; 12*34=408.", add_special_tokens=False)
    assert [t for t in enc.tokens if any(c in "0123456789" for c in t)] == list("1234567890") + list("1234408")


def test_chinese_characters_covered(raw):
    zh = zh_characters()
    assert zh and all(ord(c) > 127 for c in zh)
    for c in zh:
        assert raw.encode(c, add_special_tokens=False).tokens == [c]
    p = generate_problems("word", 1, seed=0, difficulty=2)[0]
    tokens = raw.encode(p.solution("zh"), add_special_tokens=False).tokens
    assert sum(t in zh for t in tokens) >= 4
    # only the characters we use: no other CJK character is a token
    cjk = [t for t in raw.get_vocab() if any("\u4e00" <= c <= "\u9fff" for c in t)]
    assert set(cjk) <= set(zh)


def test_auto_tokenizer_with_model_config(tok_dir, tmp_path, raw):
    """vLLM loads the tokenizer through AutoTokenizer from a directory that may hold a model config."""
    import shutil

    d = tmp_path / "model"
    shutil.copytree(tok_dir, d)
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 512}))
    tk = load_tokenizer(d)
    text = "User: What is 3+4?. Assistant: <think> Step 1: 3+4=7. </think> <answer> 7 </answer>"
    assert tk(text)["input_ids"] == raw.encode(text).ids
    assert tk.bos_token == BOS and tk.eos_token == EOS and tk.pad_token == PAD and len(tk) == 512
    assert load_tokenizer(d / "tokenizer.json")(text)["input_ids"] == raw.encode(text).ids


def test_deterministic_and_cached(tok_dir, tmp_path):
    """A second, independent build (through the default cache) gives byte-identical files; the
    cache then returns the same directory without rebuilding."""
    again = default_tokenizer_dir(cache_dir=tmp_path)
    for f in FILES:
        assert (again / f).read_bytes() == (tok_dir / f).read_bytes(), f
    mtime = (again / "tokenizer.json").stat().st_mtime_ns
    assert default_tokenizer_dir(cache_dir=tmp_path) == again
    assert (again / "tokenizer.json").stat().st_mtime_ns == mtime
    assert not list(tmp_path.glob(".*.tmp"))


def test_cache_key_follows_the_corpus_recipe(tmp_path, monkeypatch):
    """The tokenizer is trained on the corpus: a changed corpus recipe must not reuse a tokenizer
    cached from the old one (a fresh machine and a developer machine would disagree)."""
    from r1mega.data import tokenizer as T

    first = default_tokenizer_dir(cache_dir=tmp_path)
    T.corpus_fingerprint.cache_clear()
    real = T.tokenizer_corpus
    monkeypatch.setattr(T, "tokenizer_corpus", lambda n=T.DEFAULT_CORPUS_DOCS, seed=0: (
        d.replace("apples", "pears") for d in real(n, seed)))
    try:
        assert T.corpus_fingerprint() != T.corpus_fingerprint(seed=1)
        changed = default_tokenizer_dir(cache_dir=tmp_path)
        assert changed != first and changed.parent == first.parent
    finally:
        T.corpus_fingerprint.cache_clear()


def test_custom_corpus_and_sizes(tmp_path):
    d = build_tokenizer(tmp_path / "small", corpus_iter=["hello world 123 ñandú ñandú Ω Ω"] * 20, vocab_size=384)
    raw = load_raw_tokenizer(d)
    assert raw.get_vocab_size() == 384
    assert raw.encode("Ω", add_special_tokens=False).tokens == ["Ω"]   # frequent non-ASCII char added
    for text in ("hello ñandú 42 Ω", "ñ", "é"):  # Latin-1 letters stay byte-level (they are byte symbols)
        assert raw.decode(raw.encode(text).ids, skip_special_tokens=True) == text
    with pytest.raises(TokenizerBuildError, match="multiple of 64"):
        build_tokenizer(tmp_path / "bad", corpus_iter=["x"], vocab_size=500)
    with pytest.raises(TokenizerBuildError, match="too small"):
        build_tokenizer(tmp_path / "bad", corpus_iter=["x"], vocab_size=256)
    with pytest.raises(TokenizerBuildError, match="empty"):
        build_tokenizer(tmp_path / "bad", corpus_iter=[], vocab_size=512)


def test_missing_tokenizer_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_raw_tokenizer(tmp_path)
