"""Generation stops on token ids (the tokenizer's EOS / the chat template's end-of-turn token, see
PromptRenderer.stop_token_ids): the Megatron engine cuts there, keeps the token and reports it as the
stop reason (as vLLM does); the vLLM engine hands them to SamplingParams; Sampling.from_config takes
them from the stage's renderer."""
from __future__ import annotations

import pytest
import torch

from r1mega.config import load_config
from r1mega.rollout import Sampling, make_engine
from rollout_support import randomize


@pytest.fixture(scope="module")
def engine():
    from r1mega.data.tokenizer import load_tokenizer
    from r1mega.train.engine import TrainEngine

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = load_config(None, ["model.preset=tiny-dense", "rollout.engine=megatron", "data.seq_length=128",
                             "rollout.max_new_tokens=12"])
    trainer = TrainEngine(cfg.model, cfg.parallel, None, mtp=False)
    randomize(trainer, 1)
    yield make_engine(cfg, trainer), load_tokenizer()
    torch.set_num_threads(n)


def test_megatron_engine_stops_on_stop_token_ids(engine):
    eng, tok = engine
    prompt = [tok.encode("What is 2+3? <think>")]
    s = Sampling(max_new_tokens=12, stop=(), seed=2)
    free = eng.generate(prompt, s, n=1, step=1).completions[0]
    ids = free.token_ids
    k = next(k for k in range(2, len(ids)) if ids[k] not in ids[:k] and ids[k] != tok.eos_token_id)
    got = eng.generate(prompt, s.replace(stop_token_ids=(ids[k], 1_000_000)), n=1, step=1).completions[0]
    assert got.token_ids == ids[:k + 1] and len(got.logprobs) == k + 1
    assert got.finish_reason == "stop" and got.stop_reason == ids[k]


def test_vllm_sampling_params_carry_stop_token_ids():
    from r1mega.rollout.vllm_engine import VllmEngine

    p = VllmEngine._params(None, Sampling(stop_token_ids=(513, 2)), seed=3)
    assert p.stop_token_ids == [513, 2] and p.seed == 3
    assert VllmEngine._params(None, Sampling(), seed=3).stop_token_ids == []


def test_sampling_from_config_takes_the_renderers_stop_ids():
    from r1mega.data.templates import PromptRenderer
    from r1mega.data.tokenizer import load_tokenizer

    cfg = load_config(None, [], validate=False)
    assert Sampling.from_config(cfg.rollout).stop_token_ids == ()
    s = Sampling.from_config(cfg.rollout, renderer=PromptRenderer("r1_zero", load_tokenizer()), n=4)
    assert s.stop_token_ids == (2,) and s.n == 4  # the built-in tokenizer's <eos>
