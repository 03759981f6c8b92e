"""Distillation into a student of another architecture and tokenizer, end to end on CPU (issue 18): a tiny
DeepSeek-V3 teacher (MLA + MoE, r1mega's built-in tokenizer, the R1-Zero template) -> rejection sampling on
vLLM writes text samples -> a ``distill`` stage (alpha 0: SFT, as DeepSeek-R1 distilled its dense models)
trains a tiny Qwen2-style student (q/k/v biases, tied embeddings; built by transformers from a Qwen2Config and
imported with ``r1mega convert hf-to-megatron``) with its own tokenizer (a BPE trained in the test, not r1mega's)
and its own ChatML template (``data.template: hf_chat``) -> eval of the student on vLLM -> ``r1mega convert
megatron-to-hf`` -> transformers' log-probs on the export equal Megatron's.

Checked: the student's token ids are exactly its own ``apply_chat_template`` of the samples' messages (nothing
of the teacher's template), the loss falls on that data, the student is evaluated with its template, and the
export's log-probs equal the trained checkpoint's. The teacher is only initialised (2 steps): its own samples
fail the format filter, so the rows that reach the student are the stage's worked solutions (the same text path:
``messages``); the rows of accepted samples are covered by tests/data/test_student_template.py."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "data"))
from student_tokenizer import STUDENT_SYSTEM, student_tokenizer_dir  # noqa: E402
from hf_parity import hf_logprobs, megatron_logprobs, run_r1mega  # noqa: E402

pytestmark = pytest.mark.slow


def _hf_qwen2(out: Path, tok_dir: Path) -> Path:
    """A tiny Qwen2 (GQA 2:1, head_dim 64, q/k/v biases, tied embeddings, rope base 1e6), weights far from zero."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=384, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, rope_theta=1e6,
                      rms_norm_eps=1e-6, tie_word_embeddings=True, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, bos_token_id=None)
    model = Qwen2ForCausalLM(cfg).float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 1.0 / p.shape[1] ** 0.5)
            elif name.endswith("bias"):  # q/k/v biases: nonzero, or a dropped bias could not show
                p.normal_(0.0, 0.5)
        model.model.embed_tokens.weight.normal_(0.0, 1.0)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def test_tiny_deepseek_teacher_to_qwen2_student(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = _hf_qwen2(tmp_path / "qwen2", student_tokenizer_dir(tmp_path / "student_tok"))
    student = tmp_path / "student_ckpt"
    run_r1mega(["convert", "hf-to-megatron", "--hf", hf, "--out", student], tmp_path, threads=2)
    stok = student / "tokenizer"
    student_model = f"{{hf_config: {hf}}}"
    (tmp_path / "run.yaml").write_text(f"""
name: xarch
data: {{seq_length: 256, tasks: [arith, word], difficulties: [1], template: r1_zero}}
rollout: {{engine: vllm, max_new_tokens: 16, kv_cache_memory_bytes: 67108864}}
rejection: {{num_prompts: 8, samples_per_prompt: 2, require_correct: false, worked_solutions: 48,
            nonreasoning_fraction: 0.0}}
optimizer: {{lr: 3.0e-3, min_lr: 3.0e-3, warmup_steps: 0, decay_style: constant, micro_batch_size: 8,
             global_batch_size: 8}}
checkpoint: {{save_interval: 0}}
logging: {{tensorboard: false}}
pipeline:
  run_dir: {tmp_path / 'run'}
  stages:
    - {{name: teacher, kind: pretrain, steps: 2, overrides: {{model: {{preset: tiny, num_layers: 2}}}}}}
    - {{name: rejection, kind: rejection_sampling, init_from: teacher, overrides: {{model: {{preset: tiny, num_layers: 2}}}}}}
    - name: distill
      kind: distill
      init_from: {student}
      steps: 24
      overrides: {{model: {student_model}, data: {{tokenizer_path: {stok}, template: hf_chat,
                  train_paths: ["stage:rejection/samples.jsonl"]}}}}
    - {{name: eval_student, kind: eval, init_from: distill,
       overrides: {{model: {student_model}, data: {{tokenizer_path: {stok}, template: hf_chat}},
                   eval: {{benchmarks: [arith], difficulties: [1], n_problems: 8, k: 1, max_new_tokens: 16}}}}}}
""")
    run_r1mega(["run", "run.yaml"], tmp_path, timeout=900, threads=2)
    run = tmp_path / "run"

    # the samples are text: the question as the task had it and the full answer, no teacher template or ids
    rows = [json.loads(line) for line in (run / "rejection" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 48 and all(r["messages"][0]["role"] == "user" for r in rows)
    assert all(r["prompt"].startswith("A conversation between User and Assistant") for r in rows)  # the teacher's
    assert not any("Assistant" in m["content"] for r in rows for m in r["messages"])
    assert all(r["messages"][1]["content"].startswith("<think>") and "<answer>" in r["messages"][1]["content"]
               for r in rows)

    # the distill stage's ids are the student's own chat template of those messages
    from r1mega.config.loader import load_config
    from r1mega.data.tokenizer import load_tokenizer
    from r1mega.train.entry import _batches

    cfg = load_config(str(tmp_path / "run.yaml"), validate=False)
    scfg = cfg.for_stage(cfg.stage("distill"))
    tok = load_tokenizer(run / "distill" / "tokenizer")  # the copy the stage saved: the student's
    assert tok.get_vocab() == AutoTokenizer.from_pretrained(str(hf)).get_vocab()
    data = _batches(scfg, cfg.stage("distill"), tok)
    by_text = {}
    for r, (ids, mask) in zip(rows, data.encoded):
        assert ids == list(tok.apply_chat_template(r["messages"], tokenize=True, return_dict=False))
        assert tok.decode(ids).startswith(f"<|im_start|>system\n{STUDENT_SYSTEM}<|im_end|>")
        assert tok.decode([t for t, m in zip(ids, mask) if m]) == r["messages"][1]["content"] + "<|im_end|>"
        by_text[tok.decode(ids)] = ids

    # the loss falls on that data (measured: 83 -> 0.9 nats/token; the random student's tied N(0, 1) embeddings
    # make its first logits large)
    losses = [json.loads(line)["loss"] for line in (run / "distill" / "metrics.jsonl").read_text().splitlines()
              if "grad_norm" in json.loads(line)]
    assert len(losses) == 24
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.1 * first and last < 2.0, (first, last)

    # the student is evaluated (vLLM) with its own template and stop token, and writes the R1 format it learned
    # (its tokenizer spells <think> in 5 BPE pieces: a random model never starts with it)
    result = json.loads((run / "eval_student" / "eval.json").read_text())
    assert result["summary"]["arith"]["n"] == 8
    assert result["settings"]["template"] == "hf_chat" and result["settings"]["stop_token_ids"] == [tok.eos_token_id]
    samples = [json.loads(line) for line in (run / "eval_student" / "eval_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 and sum(s["text"].startswith("<think>") for s in samples) >= 6, samples

    # the export in transformers equals the trained Megatron checkpoint
    export = tmp_path / "export"
    run_r1mega(["convert", "megatron-to-hf", "--ckpt", run / "distill" / "checkpoints", "--out", export,
                "--tokenizer", stok], tmp_path, threads=2)
    hf_cfg = json.loads((export / "config.json").read_text())
    assert hf_cfg["architectures"] == ["Qwen2ForCausalLM"] and hf_cfg["tie_word_embeddings"] is True
    seqs = list(by_text.values())[:3]
    trained = hf_logprobs(AutoModelForCausalLM.from_pretrained(str(export), dtype=torch.float32).eval(), seqs)
    base = hf_logprobs(AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32).eval(), seqs)
    assert max(float((a - b).abs().max()) for a, b in zip(trained, base)) > 0.1  # training moved it
    megatron = megatron_logprobs(run / "distill" / "checkpoints", seqs)
    assert max(float((a - b).abs().max()) for a, b in zip(trained, megatron)) < 1e-4
