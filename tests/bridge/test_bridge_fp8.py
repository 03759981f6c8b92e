"""DeepSeek-V3 FP8 checkpoints (float8_e4m3fn + 128x128 ``weight_scale_inv``) import dequantised."""
from __future__ import annotations

import torch
from safetensors.torch import save_file

from bridge_helpers import randomize
from r1mega.bridge import hf_state_dict, load_hf_weights, read_hf_config, to_hf_config, write_hf_config
from r1mega.bridge.fp8 import FP8, dequantize_blockwise, quantize_blockwise
from r1mega.config.parallel import ParallelConfig
from r1mega.model.presets import get_preset

QCFG = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}


def test_dequant_formula_on_hand_computed_values():
    w = torch.tensor([[1.0, -2.0, 0.5], [448.0, 0.25, -1.5]]).to(FP8)  # all exactly representable
    scale_inv = torch.tensor([[2.0, 0.5], [0.125, 4.0]])  # blocks of 1 row x 2 columns
    out = dequantize_blockwise(w, scale_inv, block=(1, 2))
    assert torch.equal(out, torch.tensor([[2.0, -4.0, 0.25], [56.0, 0.03125, -6.0]]))
    # 128x128 blocks with partial edge blocks: element (i, j) uses scale_inv[i // 128, j // 128]
    w = torch.ones(200, 130).to(FP8)
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    out = dequantize_blockwise(w, s)
    assert out[127, 127] == 1 and out[127, 128] == 2 and out[128, 0] == 3 and out[199, 129] == 4


def test_quantize_round_trip_within_fp8_precision():
    w = torch.randn(300, 200) * torch.logspace(-3, 1, 200)  # columns of very different magnitude
    q, s = quantize_blockwise(w)
    assert q.dtype == FP8 and s.shape == (3, 2)
    back = dequantize_blockwise(q, s)
    step = s.repeat_interleave(128, 0)[:300].repeat_interleave(128, 1)[:, :200] * 2.0 ** -9  # subnormal step
    assert ((back - w).abs() <= w.abs() * 2.0 ** -4 + step).all()


def _is_quantised(name: str, t: torch.Tensor) -> bool:
    # as in the DeepSeek-V3 release: linear weights in FP8; embeddings, head, router, norms not
    return t.dim() == 2 and not any(k in name for k in ("embed_tokens", "lm_head", "shared_head.head", "mlp.gate.weight"))


def test_import_tiny_fp8_checkpoint(tmp_path):
    from r1mega.train.engine import TrainEngine

    m = get_preset("tiny", vocab_size=500)
    engine = TrainEngine(m, ParallelConfig(), None, mtp=True)
    randomize(engine)
    original = hf_state_dict(engine, m, ParallelConfig(), include_mtp=True)
    files, expected = {}, {}
    for n, t in original.items():
        if _is_quantised(n, t):
            q, s = quantize_blockwise(t)
            files[n], files[n + "_scale_inv"] = q, s
            expected[n] = dequantize_blockwise(q, s)
        else:
            files[n] = t.contiguous().clone()
            expected[n] = t
    n_fp8 = sum(1 for t in files.values() if t.dtype == FP8)
    assert n_fp8 > 100
    save_file(files, str(tmp_path / "model.safetensors"))
    write_hf_config({**to_hf_config(m, dtype="bfloat16"), "quantization_config": QCFG}, tmp_path)

    for mod in engine.chunks:
        for p in mod.parameters():
            p.data.zero_()
    load_hf_weights(engine, m, ParallelConfig(), tmp_path, quantization_config=read_hf_config(tmp_path)["quantization_config"])
    got = hf_state_dict(engine, m, ParallelConfig(), include_mtp=True)
    worst = 0.0
    for n, t in original.items():
        assert torch.equal(got[n], expected[n]), n  # exactly the blockwise dequantisation
        rel = ((got[n] - t).norm() / t.norm()).item()
        worst = max(worst, rel)
        assert rel < 0.05, (n, rel)  # within FP8 (e4m3) precision of the original
    print(f"FP8 import: {n_fp8} float8 tensors, worst relative error vs the original {worst:.3%}")
