"""The Megatron-Core rollout engine, in process (no vLLM): parity with the trainer by construction,
seeds, batching independence, stop handling and the factory."""
from __future__ import annotations

import copy

import pytest
import torch

from r1mega.config import load_config
from r1mega.rollout import Sampling, check_rollouts, make_engine
from rollout_support import max_abs_diff, randomize


@pytest.fixture(scope="module", params=["tiny", "tiny-dense"])
def setup(request, one_thread):
    from r1mega.data.tokenizer import load_tokenizer
    from r1mega.train.engine import TrainEngine

    cfg = load_config(None, [f"model.preset={request.param}", "rollout.engine=megatron", "data.seq_length=128",
                             "rollout.max_new_tokens=12"])
    trainer = TrainEngine(cfg.model, cfg.parallel, None, mtp=False)
    randomize(trainer, 1)
    tok = load_tokenizer()
    prompts = [tok.encode(t) for t in ["What is 2+3? <think>", "Hello", "<answer>", "a longer prompt than the others"]]
    return cfg, trainer, make_engine(cfg, trainer), prompts


def test_factory_and_sampled_logprobs_equal_trainer(setup):
    cfg, trainer, engine, prompts = setup
    assert engine.name == "megatron"
    for temperature in (1.0, 0.7):
        r = engine.generate(prompts, Sampling(max_new_tokens=12, temperature=temperature, stop=()), n=2, step=0)
        assert len(r.completions) == 8 and all(len(c) == 12 and c.finish_reason == "length" for c in r.completions)
        stats = check_rollouts(r, trainer, 1e-5)
        assert stats["max_abs"] < 1e-5, stats  # KV-cached decode == the trainer's full forward
    assert engine.refit(trainer).bytes == 0  # shares the trainer's weights
    with pytest.raises(NotImplementedError):
        engine.update_weights([])


def test_seeds_and_batching(setup):
    cfg, trainer, engine, prompts = setup
    s = Sampling(max_new_tokens=10, stop=(), seed=4)
    a = engine.generate(prompts, s, n=2, step=5)
    small = copy.copy(engine)  # the same engine with smaller KV batches
    small.max_batch = 3
    b = small.generate(prompts, s, n=2, step=5)
    c = engine.generate(prompts, s, n=2, step=6)
    assert [x.token_ids for x in a.completions] == [x.token_ids for x in b.completions]
    assert [x.token_ids for x in a.completions] != [x.token_ids for x in c.completions]
    greedy = engine.generate(prompts, s.replace(temperature=0.0), n=2)
    assert all(g[0].token_ids == g[1].token_ids for g in (greedy.group(i) for i in range(len(prompts))))
    assert max_abs_diff(engine.prompt_logprobs([p + [5, 6] for p in prompts]),
                        [[0.0] * (len(p) + 1) for p in prompts]) > 1.0  # real log-probs, not zeros


def test_eos_and_stop_strings(setup):
    cfg, trainer, engine, prompts = setup
    eos = engine.tokenizer.eos_token_id
    free = engine.generate(prompts[:1], Sampling(max_new_tokens=12, stop=(), seed=2), n=1, step=1).completions[0]
    from rollout_support import pick_stop

    k, stop = pick_stop(engine.tokenizer, free.token_ids)
    got = engine.generate(prompts[:1], Sampling(max_new_tokens=12, stop=(stop,), seed=2,
                                                include_stop_str_in_output=False), n=1, step=1).completions[0]
    assert got.finish_reason == "stop" and got.stop_reason == stop and got.token_ids == free.token_ids[:k + 1]
    assert stop not in got.text and len(got.logprobs) == k + 1
    assert all(t != eos for t in free.token_ids[:-1])  # EOS ends a completion and stays its last token


def test_mtp_model_is_refused(one_thread):
    from r1mega.train.engine import TrainEngine

    cfg = load_config(None, ["model.preset=tiny", "rollout.engine=megatron"])
    trainer = TrainEngine(cfg.model, cfg.parallel, None)  # MTP on (the tiny preset has one MTP layer)
    with pytest.raises(ValueError, match="mtp=False"):
        make_engine(cfg, trainer)
    with pytest.raises(ValueError, match="trainer_engine"):
        make_engine(cfg, None)


def test_generate_command_writes_jsonl(one_thread, tmp_path, capsys):
    from r1mega import cli
    from r1mega.data.jsonl import read_jsonl

    argv = ["generate", "model.preset=tiny-dense", "rollout.engine=megatron", "data.seq_length=256",
            "rollout.max_new_tokens=8", f"pipeline.run_dir={tmp_path}", "data.max_samples=2", "data.tasks=[arith]"]
    assert cli.main(argv) == 0
    rows = read_jsonl(tmp_path / "generations.jsonl")
    assert len(rows) == 2 and all(len(r["samples"]) == 1 for r in rows)
    s = rows[0]["samples"][0]
    assert len(s["token_ids"]) == len(s["logprobs"]) <= 8 and s["finish_reason"] in ("stop", "length")
    assert "Assistant:" in rows[0]["prompt"] and "generate (megatron)" in capsys.readouterr().out
