"""Logit distillation (distill.alpha > 0) needs one tokenizer for teacher and student: compared as tokenizers
(token -> id mapping and merges), not only by size. Refused with one line naming both, before any weight
loads: by ``config check`` for a ``stage:`` teacher (its stage's tokenizer config) and for a checkpoint
teacher, and by the stage itself (the tokenizer recorded with the teacher checkpoint vs data.tokenizer_path).
The same tokenizer, a ``save_pretrained`` copy of it included, passes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from r1mega.config.base import ConfigError
from r1mega.config.loader import load_config
from r1mega.data.tokenizer import build_tokenizer, default_tokenizer_dir, load_tokenizer, save_tokenizer_copy
from r1mega.data.tokenizer import tokenizer_fingerprint


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    """The built-in 512 tokenizer, a save_pretrained copy of it, and another tokenizer of exactly 512 tokens."""
    root = tmp_path_factory.mktemp("toks")
    builtin = default_tokenizer_dir(vocab_size=512)
    copy = save_tokenizer_copy(load_tokenizer(builtin), builtin, root / "copy")
    other = build_tokenizer(root / "other", vocab_size=512, seed=7)  # the same recipe on other documents
    return {"builtin": builtin, "copy": copy, "other": other}


def test_fingerprint_compares_tokens_not_sizes(toks):
    a, b = load_tokenizer(toks["builtin"]), load_tokenizer(toks["other"])
    assert len(a) == len(b) == 512 and a.get_vocab() != b.get_vocab()
    assert tokenizer_fingerprint(toks["other"]) != tokenizer_fingerprint(toks["builtin"])
    assert tokenizer_fingerprint(toks["copy"]) == tokenizer_fingerprint(toks["builtin"])  # another serialisation
    assert tokenizer_fingerprint(toks["copy"] / "tokenizer.json") == tokenizer_fingerprint(toks["copy"])
    assert tokenizer_fingerprint(toks["copy"].parent / "nothing") is None


def _cfg(tmp_path, teacher: str, student_data: dict, teacher_data=None, validate=True, vocab=512):
    rows = tmp_path / "sft.jsonl"
    rows.write_text('{"prompt": "1+1=", "response": "2"}\n')
    stages = [{"name": "big", "kind": "pretrain", "steps": 2, "overrides": {"data": teacher_data or {}}},
              {"name": "student", "kind": "distill", "steps": 2,
               "overrides": {"model": {"preset": "tiny-dense", "vocab_size": vocab}, "data": {"train_paths": [str(rows)], **student_data},
                             "distill": {"teacher": teacher, "alpha": 0.5}}}]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"preset": "tiny", "vocab_size": vocab}, "pipeline": {"run_dir": str(tmp_path / "run"),
                                                                              "stages": stages}}))
    return load_config(str(path), [], world_size=1 if validate else None, validate=validate)


def _one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_config_check_refuses_another_tokenizer_of_the_same_size(tmp_path, toks):
    # model.vocab_size is 512 for both (the old check passed), the tokenizers differ
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, "stage:big", {"tokenizer_path": str(toks["other"])})
    msg = _one_line(e)
    assert "stage 'student': distill.teacher" in msg and str(toks["other"]) in msg and "different tokenizers" in msg
    # two built-in tokenizers of other sizes under one model.vocab_size (640 holds both)
    with pytest.raises(ConfigError, match=r"built-in:512 .*built-in:640.*different tokenizers"):
        _cfg(tmp_path, "stage:big", {"tokenizer_vocab_size": 640}, teacher_data={"tokenizer_vocab_size": 512}, vocab=640)
    # the same tokenizer, given as a path on one side: accepted
    _cfg(tmp_path, "stage:big", {"tokenizer_path": str(toks["copy"])})
    _cfg(tmp_path, "stage:big", {"tokenizer_path": str(toks["builtin"])}, teacher_data={"tokenizer_path": str(toks["copy"])})


def _checkpoint(root: Path, tokenizer) -> Path:
    """A teacher checkpoint's metadata (no weights: a refusal must come before any is read) and its tokenizer."""
    from dataclasses import asdict

    from r1mega.model.presets import get_preset

    step = root / "step_00000002"
    step.mkdir(parents=True)
    (step / "r1mega_meta.json").write_text(json.dumps({"step": 2, "model": asdict(get_preset("tiny"))}))
    (root / "latest").write_text(step.name)
    if tokenizer is not None:
        save_tokenizer_copy(load_tokenizer(tokenizer), tokenizer, root / "tokenizer")
    return root


def test_checkpoint_teacher_refused_before_weights_load(tmp_path, toks, monkeypatch):
    import r1mega.train.distill as distill
    from r1mega.train.entry import build_teacher

    from types import SimpleNamespace

    loads = []
    fake = SimpleNamespace(model_cfg=SimpleNamespace(preset="tiny", arch="deepseek_v3", num_layers=2))
    monkeypatch.setattr(distill, "Teacher", lambda path, *a, **k: loads.append(path) or fake)
    other = _checkpoint(tmp_path / "other_ckpt", toks["other"])
    with pytest.raises(ConfigError, match="different tokenizers") as e:  # config check
        _cfg(tmp_path, str(other), {})
    assert str(other / "tokenizer") in _one_line(e)
    cfg = _cfg(tmp_path, str(other), {}, validate=False)
    with pytest.raises(ConfigError, match="different tokenizers"):  # the stage, on its own
        build_teacher(cfg.for_stage("student"), cfg.stage("student"))
    bare = _checkpoint(tmp_path / "bare_ckpt", None)
    cfg = _cfg(tmp_path, str(bare), {}, validate=False)
    with pytest.raises(ConfigError, match="no tokenizer recorded with the checkpoint") as e:
        build_teacher(cfg.for_stage("student"), cfg.stage("student"))
    _one_line(e)
    assert loads == []  # no teacher was built
    same = _checkpoint(tmp_path / "same_ckpt", toks["builtin"])
    cfg = _cfg(tmp_path, str(same), {})  # config check passes
    assert build_teacher(cfg.for_stage("student"), cfg.stage("student")) is fake
    assert loads == [same / "step_00000002"]
