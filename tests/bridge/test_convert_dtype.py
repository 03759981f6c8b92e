"""`r1mega convert megatron-to-hf` without --dtype writes every floating tensor in the model's params_dtype.

On CPU Megatron's local-spec RMSNorm keeps its weight in float32 whatever params_dtype says, so a bf16 model
holds bf16 matrices beside float32 norms; the export must not leak that platform detail into the files."""
from __future__ import annotations

import json
import math

import torch
from safetensors.torch import load_file

from r1mega import tools_convert


@torch.no_grad()
def _bf16_qwen3(path):
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.Qwen3Config(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   max_position_embeddings=128, dtype="bfloat16")
    model = transformers.Qwen3ForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():  # norms off 1.0, so that a norm written back at another dtype would show
        noise = torch.randn(p.shape, generator=g)
        p.copy_(1.0 + 0.2 * noise if p.dim() == 1 else noise / math.sqrt(p.shape[-1]))
    model.to(torch.bfloat16).save_pretrained(path)


def test_bf16_model_exports_bf16_without_dtype_flag(tmp_path):
    _bf16_qwen3(tmp_path / "hf")
    src = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert {t.dtype for t in src.values()} == {torch.bfloat16}
    assert tools_convert.main(["hf-to-megatron", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt")]) == 0
    assert tools_convert.main(["megatron-to-hf", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "back")]) == 0
    back = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert sorted(back) == sorted(src)
    wrong = {k: str(v.dtype) for k, v in back.items() if v.dtype != torch.bfloat16}
    assert wrong == {}, wrong  # before the fix: every input/post-attention/final/q/k norm as float32
    assert [k for k in src if not torch.equal(src[k], back[k])] == []
    assert json.loads((tmp_path / "back" / "config.json").read_text())["torch_dtype"] == "bfloat16"
