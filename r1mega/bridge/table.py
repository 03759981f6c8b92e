"""Megatron-Core <-> Hugging Face mapping tables, one per architecture.

A table is built for one :class:`~r1mega.config.model.ModelConfig` and lists every weight as an
:class:`Entry`:

* ``megatron``: the *canonical* Megatron name, i.e. the name in an unsharded model (TP=PP=EP=1):
  global layer index, global expert index (``...local_experts.{e}...`` with ``e`` global);
* ``hf``: the Hugging Face checkpoint (safetensors) names it becomes, one per piece;
* ``shape``: the full Megatron shape (vocabulary padded as the builder pads it);
* ``tp``: the tensor-parallel partition dim (None = replicated);
* ``layout``: how the full Megatron tensor becomes the HF pieces (see :func:`to_hf`);
* ``expert``: the global routed-expert index (sharded by EP; TP over the expert-TP group);
* ``layer``: the global decoder layer (None for embedding/head); the PP stage that owns a layer
  is whichever rank holds it (found at run time from ``TransformerLayer.layer_number``).

Layouts: ``copy`` (same tensor), ``vocab`` (padded rows sliced off), ``glu`` (Megatron
``linear_fc1`` = [gate; up] -> ``gate_proj``, ``up_proj``; under TP each rank holds
[gate_shard; up_shard]), ``qkv`` (Megatron ``linear_qkv`` interleaves per query group
[q (heads/groups heads), k, v] -> ``q_proj``, ``k_proj``, ``v_proj``; the same for Qwen2's
``linear_qkv.bias``).

MLA needs no permutation: Megatron's MLA RoPE (``multi_latent_attention=True``) de-interleaves
the rope dims ``[x0, x2, ..., x1, x3, ...]`` before rotating, exactly what transformers does
with ``rope_interleave=True`` (the DeepSeek checkpoints' convention, and vLLM's), so q_b/kv_a rows
copy as they are. The builder keeps ``rotary_interleaved=False`` (Megatron refuses it with MLA).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from r1mega.config.model import ModelConfig
from r1mega.model.builder import padded_vocab_size


class BridgeError(ValueError):
    """A name, shape or layout the bridge cannot map (message names the tensor)."""


@dataclass(frozen=True)
class Entry:
    megatron: str
    hf: tuple
    shape: tuple
    tp: Optional[int] = None
    layout: str = "copy"
    expert: Optional[int] = None
    layer: Optional[int] = None


# (megatron suffix, hf suffixes, shape(cfg), tp dim, layout); shapes are full Megatron shapes.
Shape = Callable[[ModelConfig], tuple]
LayerRule = tuple  # (str, tuple[str, ...], Shape, Optional[int], str)


def _mla_rules(m: ModelConfig) -> list:
    h, n = m.hidden_size, m.num_attention_heads
    qk = m.qk_nope_head_dim + m.qk_rope_head_dim
    rules = [("input_layernorm.weight", ("input_layernorm.weight",), (h,), None, "copy")]
    if m.q_lora_rank is None:
        rules.append(("self_attention.linear_q_proj.weight", ("self_attn.q_proj.weight",), (n * qk, h), 0, "copy"))
    else:
        rules += [
            ("self_attention.linear_q_down_proj.weight", ("self_attn.q_a_proj.weight",), (m.q_lora_rank, h), 0, "copy"),
            ("self_attention.q_layernorm.weight", ("self_attn.q_a_layernorm.weight",), (m.q_lora_rank,), None, "copy"),
            ("self_attention.linear_q_up_proj.weight", ("self_attn.q_b_proj.weight",), (n * qk, m.q_lora_rank), 0, "copy"),
        ]
    rules += [
        ("self_attention.linear_kv_down_proj.weight", ("self_attn.kv_a_proj_with_mqa.weight",),
         (m.kv_lora_rank + m.qk_rope_head_dim, h), 0, "copy"),
        ("self_attention.kv_layernorm.weight", ("self_attn.kv_a_layernorm.weight",), (m.kv_lora_rank,), None, "copy"),
        ("self_attention.linear_kv_up_proj.weight", ("self_attn.kv_b_proj.weight",),
         (n * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank), 0, "copy"),
        ("self_attention.linear_proj.weight", ("self_attn.o_proj.weight",), (h, n * m.v_head_dim), 1, "copy"),
        ("pre_mlp_layernorm.weight", ("post_attention_layernorm.weight",), (h,), None, "copy"),
    ]
    return rules


def _gqa_rules(m: ModelConfig) -> list:
    h, n = m.hidden_size, m.num_attention_heads
    kv, d = m.num_key_value_heads or n, m.head_dim or m.hidden_size // n
    qkv = ("self_attn.q_proj.{}", "self_attn.k_proj.{}", "self_attn.v_proj.{}")
    rules = [
        ("input_layernorm.weight", ("input_layernorm.weight",), (h,), None, "copy"),
        ("self_attention.linear_qkv.weight", tuple(q.format("weight") for q in qkv), ((n + 2 * kv) * d, h), 0, "qkv"),
    ]
    if m.qkv_bias:  # Qwen2: q/k/v biases, grouped and TP-sharded like the weight's rows
        rules.append(("self_attention.linear_qkv.bias", tuple(q.format("bias") for q in qkv), ((n + 2 * kv) * d,), 0, "qkv"))
    if m.qk_norm:  # Qwen3: one RMSNorm over the head dim, shared by all heads
        rules += [("self_attention.q_layernorm.weight", ("self_attn.q_norm.weight",), (d,), None, "copy"),
                  ("self_attention.k_layernorm.weight", ("self_attn.k_norm.weight",), (d,), None, "copy")]
    return rules + [
        ("self_attention.linear_proj.weight", ("self_attn.o_proj.weight",), (h, n * d), 1, "copy"),
        ("pre_mlp_layernorm.weight", ("post_attention_layernorm.weight",), (h,), None, "copy"),
    ]


def _mlp_rules(ffn: int, h: int, meg: str, hf: str) -> list:
    return [(f"{meg}linear_fc1.weight", (f"{hf}gate_proj.weight", f"{hf}up_proj.weight"), (2 * ffn, h), 0, "glu"),
            (f"{meg}linear_fc2.weight", (f"{hf}down_proj.weight",), (h, ffn), 1, "copy")]


def _moe_rules(m: ModelConfig) -> list:
    h = m.hidden_size
    rules = [("mlp.router.weight", ("mlp.gate.weight",), (m.n_routed_experts, h), None, "copy")]
    if m.expert_bias:
        rules.append(("mlp.router.expert_bias", ("mlp.gate.e_score_correction_bias",), (m.n_routed_experts,), None, "copy"))
    if m.n_shared_experts:
        rules += _mlp_rules(m.n_shared_experts * m.moe_intermediate_size, h, "mlp.shared_experts.", "mlp.shared_experts.")
    return rules


def _expert_rules(m: ModelConfig) -> list:
    return _mlp_rules(m.moe_intermediate_size, m.hidden_size, "mlp.experts.local_experts.{E}.", "mlp.experts.{E}.")


class BridgeTable:
    """Every weight of one model config: lookups both ways and the HF shapes."""

    def __init__(self, m: ModelConfig, include_mtp: bool = True):
        self.cfg = m
        self.arch = m.arch
        self.entries: list[Entry] = []
        h, vp = m.hidden_size, padded_vocab_size(m.vocab_size)
        self._add(Entry("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), (vp, h), 0, "vocab"))
        kinds = m.layer_kinds()
        for L, kind in enumerate(kinds):
            self._layer(f"decoder.layers.{L}.", f"model.layers.{L}.", kind, L)
        self._add(Entry("decoder.final_layernorm.weight", ("model.norm.weight",), (h,)))
        if not m.tie_word_embeddings:
            self._add(Entry("output_layer.weight", ("lm_head.weight",), (vp, h), 0, "vocab"))
        self.mtp_layers = m.num_nextn_predict_layers if (include_mtp and m.arch == "deepseek_v3") else 0
        for k in range(self.mtp_layers):
            L = m.num_layers + k
            mp, hp = f"mtp.layers.{k}.", f"model.layers.{L}."
            for meg, hf, shape, tp in (("enorm.weight", "enorm.weight", (h,), None), ("hnorm.weight", "hnorm.weight", (h,), None),
                                       ("eh_proj.weight", "eh_proj.weight", (h, 2 * h), 0),
                                       ("final_layernorm.weight", "shared_head.norm.weight", (h,), None)):
                self._add(Entry(mp + meg, (hp + hf,), shape, tp, layer=L))
            self._layer(mp + "transformer_layer.", hp, kinds[-1], L)
        self.by_megatron = {e.megatron: e for e in self.entries}
        self.by_hf = {n: (e, i) for e in self.entries for i, n in enumerate(e.hf)}
        # MTP copies of the shared embedding / head in DeepSeek checkpoints (written on export,
        # accepted and skipped on import).
        self.mtp_copies = {}
        for k in range(self.mtp_layers):
            hp = f"model.layers.{m.num_layers + k}."
            self.mtp_copies[hp + "embed_tokens.weight"] = "model.embed_tokens.weight"
            self.mtp_copies[hp + "shared_head.head.weight"] = "model.embed_tokens.weight" if m.tie_word_embeddings else "lm_head.weight"

    def _add(self, e: Entry) -> None:
        self.entries.append(e)

    def _layer(self, meg: str, hf: str, kind: str, L: int) -> None:
        m = self.cfg
        rules = _mla_rules(m) if m.mla else _gqa_rules(m)
        if kind == "moe":
            rules += _moe_rules(m)
        else:
            rules += _mlp_rules(m.intermediate_size, m.hidden_size, "mlp.", "mlp.")
        for ms, hs, shape, tp, layout in rules:
            self._add(Entry(meg + ms, tuple(hf + s for s in hs), shape, tp, layout, layer=L))
        if kind == "moe":
            for e in range(m.n_routed_experts):
                for ms, hs, shape, tp, layout in _expert_rules(m):
                    self._add(Entry(meg + ms.format(E=e), tuple(hf + s.format(E=e) for s in hs), shape, tp, layout, e, L))

    # ------------------------------------------------------------------ lookups
    def megatron(self, name: str) -> Entry:
        try:
            return self.by_megatron[name]
        except KeyError:
            raise BridgeError(f"no bridge rule for Megatron parameter {name!r} (arch {self.arch})") from None

    def hf(self, name: str) -> tuple:
        try:
            return self.by_hf[name]
        except KeyError:
            raise BridgeError(f"unknown Hugging Face tensor {name!r} for a {self.arch} model") from None

    def hf_shapes(self) -> dict:
        """Expected HF shape of every HF tensor (derived by running the layout on meta tensors)."""
        out = {}
        for e in self.entries:
            for n, t in zip(e.hf, to_hf(e, torch.empty(e.shape, device="meta"), self.cfg)):
                out[n] = tuple(t.shape)
        return out


def mapping_table(m: ModelConfig, include_mtp: bool = True) -> BridgeTable:
    return BridgeTable(m, include_mtp)


# ---------------------------------------------------------------------------------- layouts
def _qkv_sizes(m: ModelConfig) -> tuple:
    n = m.num_attention_heads
    kv, d = m.num_key_value_heads or n, m.head_dim or m.hidden_size // n
    return kv, (n // kv) * d, d


def to_hf(e: Entry, full: torch.Tensor, m: ModelConfig) -> list:
    """The full (unsharded) Megatron tensor -> the HF pieces (views where possible)."""
    if e.layout == "copy":
        return [full]
    if e.layout == "vocab":
        return [full[:m.vocab_size]]
    if e.layout == "glu":
        return list(full.chunk(2, dim=0))
    if e.layout == "qkv":  # a weight [rows, h] or a bias [rows]
        g, q, d = _qkv_sizes(m)
        rest = tuple(full.shape[1:])
        grouped = full.view(g, q + 2 * d, *rest)
        return [p.reshape(-1, *rest) for p in grouped.split([q, d, d], dim=1)]
    raise BridgeError(f"{e.megatron}: unknown layout {e.layout!r}")


def from_hf(e: Entry, parts: list, m: ModelConfig) -> torch.Tensor:
    """The HF pieces -> the full Megatron tensor (padding rows are zeros)."""
    if e.layout == "copy":
        return parts[0]
    if e.layout == "vocab":
        t = parts[0]
        pad = e.shape[0] - t.shape[0]
        return torch.cat([t, t.new_zeros((pad,) + tuple(t.shape[1:]))]) if pad else t
    if e.layout == "glu":
        return torch.cat(parts, dim=0)
    if e.layout == "qkv":
        g, q, d = _qkv_sizes(m)
        rest = tuple(parts[0].shape[1:])
        return torch.cat([parts[0].view(g, q, *rest), parts[1].view(g, d, *rest), parts[2].view(g, d, *rest)],
                         dim=1).reshape(-1, *rest)
    raise BridgeError(f"{e.megatron}: unknown layout {e.layout!r}")


def shards_to_full(e: Entry, shards: list, dim: int) -> torch.Tensor:
    """Concatenate TP shards (rank order). ``glu`` shards are [gate_i; up_i] each."""
    if len(shards) == 1:
        return shards[0]
    if e.layout == "glu" and dim == 0:
        halves = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    return torch.cat(shards, dim=dim)


def full_to_shard(e: Entry, full: torch.Tensor, dim: int, rank: int, size: int) -> torch.Tensor:
    """This TP rank's shard of the full Megatron tensor (inverse of :func:`shards_to_full`)."""
    if size == 1:
        return full
    if full.shape[dim] % size:
        raise BridgeError(f"{e.megatron}: dim {dim} of shape {tuple(full.shape)} does not split over {size} ranks")
    if e.layout == "glu" and dim == 0:
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(size, 0)[rank], up.chunk(size, 0)[rank]], dim=0)
    return full.chunk(size, dim=dim)[rank]


# ------------------------------------------------------------------- local Megatron names
# Transformer Engine specs fuse the norms into the following linear and use grouped experts;
# these aliases map those names onto the local-spec names the table uses.
_ALIASES = [
    (re.compile(r"self_attention\.linear_qkv\.layer_norm_weight$"), "input_layernorm.weight"),
    (re.compile(r"self_attention\.linear_q_up_proj\.layer_norm_weight$"), "self_attention.q_layernorm.weight"),
    (re.compile(r"self_attention\.linear_kv_up_proj\.layer_norm_weight$"), "self_attention.kv_layernorm.weight"),
    (re.compile(r"mlp\.linear_fc1\.layer_norm_weight$"), "pre_mlp_layernorm.weight"),
    (re.compile(r"mlp\.experts\.linear_fc([12])\.weight(\d+)$"), r"mlp.experts.local_experts.\2.linear_fc\1.weight"),
]
_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.*)$")
_EXPERT = re.compile(r"^(.*\.local_experts\.)(\d+)(\..*)$")


def canonical_suffix(suffix: str) -> str:
    for pat, repl in _ALIASES:
        if pat.search(suffix):
            return pat.sub(repl, suffix)
    return suffix


def canonical_name(local: str, layer_map: dict, ep_rank: int, n_local_experts: int) -> str:
    """A chunk-local Megatron name -> canonical name (global layer and expert indices).
    ``layer_map``: local decoder index -> global layer index (from ``layer_number``)."""
    name = canonical_suffix(local)
    m = _LAYER.match(name)
    if m:
        name = f"decoder.layers.{layer_map[int(m.group(1))]}.{m.group(2)}"
    x = _EXPERT.match(name)
    if x:
        name = f"{x.group(1)}{ep_rank * n_local_experts + int(x.group(2))}{x.group(3)}"
    return name
