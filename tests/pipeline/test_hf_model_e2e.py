"""A user's first hour, end to end on a Hugging Face model made by transformers in the test: a tiny Llama with a
ChatML chat template, tied embeddings (as SmolLM2 / Qwen2.5-0.5B / Llama-3.2-1B) and untied -> ``r1mega convert
hf-to-megatron`` -> GRPO (vLLM rollouts) from a JSONL prompt file rendered with the tokenizer's own template
(``hf_chat``), the model config taken from the checkpoint -> eval on a held-out JSONL -> ``r1mega convert
megatron-to-hf`` -> transformers loads the export and its log-probs equal the trainer's.

Each step is the CLI a user runs, in its own process (vLLM starts once per process)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "data"))
from chat_fixtures import chatml_dir  # noqa: E402
from hf_parity import hf_logprobs, megatron_logprobs, run_r1mega  # noqa: E402

pytestmark = pytest.mark.slow


def _hf_llama(out: Path, tok_dir: Path, tied: bool) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rope_theta=1e5,
                      tie_word_embeddings=tied, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg).float()
    with torch.no_grad():  # log-probs far from uniform: a wrong weight cannot hide
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 1.0 / p.shape[1] ** 0.5)
        model.model.embed_tokens.weight.normal_(0.0, 1.0)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def _write_prompts(path: Path, pairs) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n"
                            for a, b in pairs))
    return path


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_hf_llama_convert_grpo_eval_export(tmp_path, tied):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = _hf_llama(tmp_path / "hf", chatml_dir(tmp_path), tied=tied)
    ckpt = tmp_path / "ckpt"
    run_r1mega(["convert", "hf-to-megatron", "--hf", hf, "--out", ckpt], tmp_path)
    assert (ckpt / "tokenizer" / "tokenizer_config.json").exists()
    _write_prompts(tmp_path / "train.jsonl", [(a, b) for a in range(1, 9) for b in range(1, 5)])
    _write_prompts(tmp_path / "heldout.jsonl", [(a, 10) for a in range(1, 5)])
    (tmp_path / "run.yaml").write_text(f"""
name: e2e
data: {{tokenizer_path: {ckpt / 'tokenizer'}, template: hf_chat, seq_length: 256,
        system_prompt: "Think inside <think> </think>, then answer inside <answer> </answer>.",
        train_paths: [train.jsonl], eval_paths: [heldout.jsonl]}}
optimizer: {{lr: 1.0e-3, weight_decay: 1.0, micro_batch_size: 8, global_batch_size: 8}}
rollout: {{max_new_tokens: 16, kv_cache_memory_bytes: 67108864}}
grpo: {{group_size: 4, prompts_per_step: 4}}
eval: {{k: 2}}
pipeline:
  run_dir: {tmp_path / 'run'}
  stages:
    - {{name: rl, kind: grpo, init_from: {ckpt}, steps: 2}}
    - {{name: ev, kind: eval, init_from: rl}}
""")
    out = run_r1mega(["run", "run.yaml"], tmp_path, timeout=900)
    # every engine start (GRPO's and eval's) checked against the trainer, and every GRPO refit too
    assert out.count("vLLM probe after refit 1 (the start-up load): engine vs trainer log-probs agree") == 2, out
    run = tmp_path / "run"
    metrics = [json.loads(line) for line in (run / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert max(m.get("step", 0) for m in metrics) == 2
    assert all(m["refit/probe_mean_abs"] < 1e-3 for m in metrics if "step" in m)
    prompts = [json.loads(line) for line in (run / "rl" / "prompts.jsonl").read_text().splitlines()]
    assert len(prompts) == 2
    result = json.loads((run / "ev" / "eval.json").read_text())
    assert set(result["summary"]) == {"file:heldout"}  # the user's eval file only (no built-in benchmarks)
    assert result["summary"]["file:heldout"]["n"] == 4
    export = tmp_path / "export"
    run_r1mega(["convert", "megatron-to-hf", "--ckpt", run / "rl" / "checkpoints", "--out", export,
          "--tokenizer", ckpt / "tokenizer"], tmp_path)
    cfg = json.loads((export / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is tied and cfg["architectures"] == ["LlamaForCausalLM"]
    tok = AutoTokenizer.from_pretrained(str(export))
    assert tok.chat_template == AutoTokenizer.from_pretrained(str(hf)).chat_template
    seqs = [tok.apply_chat_template([{"role": "user", "content": "What is 3 + 4?"}], add_generation_prompt=True,
                                    tokenize=True, return_dict=False) + tok.encode("7", add_special_tokens=False)]
    trained = hf_logprobs(AutoModelForCausalLM.from_pretrained(str(export), dtype=torch.float32).eval(), seqs)
    base = hf_logprobs(AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32).eval(), seqs)
    # GRPO changed the weights (a random model rarely earns a reward, so every group may have zero advantage:
    # the decoupled weight decay, 1e-3 of each weight per step, still moves them far beyond the parity tolerance),
    # and transformers on the export equals the trained Megatron checkpoint
    assert max(float((a - b).abs().max()) for a, b in zip(trained, base)) > 1e-4
    megatron = megatron_logprobs(run / "rl" / "checkpoints", seqs)
    assert max(float((a - b).abs().max()) for a, b in zip(trained, megatron)) < 1e-4
    from safetensors.torch import load_file

    sd = {}
    for f in export.glob("*.safetensors"):
        sd.update(load_file(str(f)))
    assert ("lm_head.weight" in sd) is not tied  # tied: one tensor; untied: the trained output layer too
    if not tied:
        assert not torch.equal(sd["lm_head.weight"], sd["model.embed_tokens.weight"])
