"""Shared helpers of the bridge tests: deterministic non-trivial weights, HF directories, log-probs."""
from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from r1mega.bridge import to_hf_config, write_hf_config
from r1mega.bridge.local import modules_of


@torch.no_grad()
def randomize(engine, seed: int = 0) -> None:
    """Weights with unit-scale activations (std 1/sqrt(fan_in)), norms around 1 and a non-zero
    expert bias, so that log-probs are far from uniform and every mapping mistake shows. Padded
    vocabulary rows are zero (as after an HF import). Single-rank engines only."""
    g = torch.Generator().manual_seed(seed)
    vocab = engine.model_cfg.vocab_size
    for module in modules_of(engine):
        for name, t in sorted(module.state_dict(keep_vars=True).items()):
            if not torch.is_tensor(t) or name.endswith("_extra_state"):
                continue
            noise = torch.randn(t.shape, generator=g)
            if name.endswith("expert_bias"):
                val = 0.1 * noise
            elif t.dim() == 1:
                val = 1.0 + 0.2 * noise
            elif "word_embeddings" in name or name == "output_layer.weight":
                val = noise / (1.0 if "word_embeddings" in name else math.sqrt(t.shape[1]))
                val[vocab:] = 0.0
            else:
                val = noise / math.sqrt(t.shape[1])
            t.data.copy_(val.to(t.dtype))


def write_hf_dir(sd: dict, model_cfg, out: Path, extra: dict | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().clone() for k, v in sd.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    write_hf_config(to_hf_config(model_cfg, extra=extra), out)
    return out


def sequences(vocab: int, n: int = 4, length: int = 24, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (length - 3 * i,), generator=g).tolist() for i in range(n)]


@torch.no_grad()
def hf_logprobs(model, batch: dict) -> torch.Tensor:
    """Per-token log-probs [B,S] of batch['labels'] from a transformers causal LM (right padding)."""
    logits = model(input_ids=batch["tokens"]).logits.float()
    return torch.log_softmax(logits, dim=-1).gather(-1, batch["labels"].unsqueeze(-1)).squeeze(-1)


def check_through_megatron(name: str, hf_model, hf_dir: Path, model_cfg, engine, seq_len: int) -> float:
    """A transformers model and its Megatron conversion: log-probs within fp32 tolerance (far from uniform),
    the export back to HF bit-exact tensor for tensor, and the architecture's parameter count equal to the
    built model's. Returns the max |log-prob difference|."""
    from safetensors.torch import load_file

    from r1mega.bridge import hf_state_dict
    from r1mega.config.parallel import ParallelConfig
    from r1mega.model.builder import padded_vocab_size
    from r1mega.model.counting import count_parameters
    from r1mega.train.batching import lm_batch

    batch = lm_batch(sequences(model_cfg.vocab_size, n=3, length=seq_len))
    ours, theirs = engine.logprobs(batch), hf_logprobs(hf_model, batch)
    mask = batch["loss_mask"].bool()
    diff = (ours - theirs)[mask].abs().max().item()
    print(f"{name}: max |log-prob diff| = {diff:.2e} over {int(mask.sum())} tokens "
          f"(mean log-prob {ours[mask].mean():.3f}, std {ours[mask].std():.3f})")
    assert diff < 1e-4
    assert ours[mask].std() > 0.5  # far from uniform
    src = load_file(str(Path(hf_dir) / "model.safetensors"))
    back = hf_state_dict(engine, model_cfg, ParallelConfig())
    assert sorted(back) == sorted(src)
    assert [k for k in src if not torch.equal(src[k], back[k])] == []
    built = sum(p.numel() for mod in modules_of(engine) for p in mod.parameters())
    assert count_parameters(model_cfg, padded_vocab_size(model_cfg.vocab_size)).total == built
    return diff


def refused(cfg: dict, key: str, what: str) -> None:
    """``from_hf_config(cfg)`` fails with one line naming ``config.json:KEY`` and saying ``what``."""
    import pytest

    from r1mega.bridge import from_hf_config
    from r1mega.config.base import ConfigError

    with pytest.raises(ConfigError) as e:
        from_hf_config(cfg)
    msg = str(e.value)
    assert f"config.json:{key}" in msg and what in msg and "\n" not in msg, msg
