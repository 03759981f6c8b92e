"""GGUF import (`r1mega convert hf-to-megatron --hf X.gguf`) on a tiny Llama and a tiny Qwen2 (q/k/v biases,
rope base 1e6) written as real GGUF files.

The files are made here with the ``gguf`` package's writer the way llama.cpp's converter does it (q/k rows
permuted in llama files, not in qwen2 ones; biases as ``blk.N.attn_{q,k,v}.bias``; tied output left out, a
byte-level BPE tokenizer and a chat template in the metadata), stored
as float32, so the converted Megatron model must give the *source* transformers model's log-probs:
this checks transformers' GGUF reading, our un-tying and the bridge mapping together. Needs the
``real`` extra (``make setup-real``); skipped without it.
"""
from __future__ import annotations

import json

import pytest
import torch

gguf = pytest.importorskip("gguf", reason="the 'real' extra (gguf, accelerate) is not installed: make setup-real")
pytest.importorskip("accelerate", reason="the 'real' extra (gguf, accelerate) is not installed: make setup-real")

from bridge_helpers import hf_logprobs, sequences  # noqa: E402
from r1mega import tools_convert  # noqa: E402
from r1mega.config.parallel import ParallelConfig  # noqa: E402
from r1mega.train.batching import lm_batch  # noqa: E402

CHAT = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he")]


def _byte_chars() -> list:
    """GPT-2's byte -> printable character table (byte-level BPE)."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    extra = [b for b in range(256) if b not in keep]
    table = dict(zip(keep, keep)) | {b: 256 + i for i, b in enumerate(extra)}
    return [chr(table[b]) for b in range(256)]


def _tiny_llama(arch: str = "llama"):
    """A tiny tied Llama, or (``qwen2``) a tiny tied Qwen2 with its q/k/v biases and rope base 1e6."""
    import transformers

    vocab = len(SPECIALS) + 256 + len(MERGES)
    kw = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=True,
              bos_token_id=1, eos_token_id=2, pad_token_id=2)
    if arch == "qwen2":
        cfg = transformers.Qwen2Config(**kw, rope_theta=1e6, use_sliding_window=False)
    else:
        cfg = transformers.LlamaConfig(**kw, head_dim=16, rope_theta=1e5)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # unit-scale weights, norms around 1, biases of 0.5: log-probs far from uniform
        for name, p in model.named_parameters():
            p.copy_(0.5 * torch.randn_like(p) if name.endswith("bias") else 1 + 0.2 * torch.randn_like(p) if p.dim() == 1
                    else torch.randn_like(p) / (1 if "embed" in name else p.shape[1] ** 0.5))
    return model


def _permute(w, n_head: int):
    """llama.cpp's q/k row order (the inverse of transformers' reverse permutation)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model, path, arch: str = "llama"):
    c = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny test {arch}")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(SPECIALS + _byte_chars() + ["".join(m) for m in MERGES])
    w.add_token_types([gguf.TokenType.CONTROL] * len(SPECIALS) + [gguf.TokenType.NORMAL] * (256 + len(MERGES)))
    w.add_token_merges([" ".join(m) for m in MERGES])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_chat_template(CHAT)
    names = {"embed_tokens": "token_embd", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate",
             "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
             "post_attention_layernorm": "ffn_norm", "norm": "output_norm"}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied: llama.cpp leaves output.weight out
        parts = name.split(".")
        key = ".".join(parts[3:-1]) if parts[1] == "layers" else parts[1]
        g = (f"blk.{parts[2]}." if parts[1] == "layers" else "") + names[key] + "." + parts[-1]
        a = t.float().numpy()
        if arch == "llama" and key == "self_attn.q_proj":  # llama.cpp permutes llama files only (not qwen2)
            a = _permute(a, c.num_attention_heads)
        elif arch == "llama" and key == "self_attn.k_proj":
            a = _permute(a, c.num_key_value_heads)
        w.add_tensor(g, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_converts_to_megatron_with_the_source_models_logprobs(tmp_path, arch):
    src = _tiny_llama(arch)
    f = write_gguf(src, tmp_path / "tiny.gguf", arch)
    assert tools_convert.main(["hf-to-megatron", "--hf", str(f), "--out", str(tmp_path / "ckpt")]) == 0
    m, engine = _load(tmp_path / "ckpt")
    assert (m.arch, m.num_layers, m.hidden_size, m.num_key_value_heads, m.tie_word_embeddings, m.rope_theta,
            m.qkv_bias) == ("dense", 2, 64, 2, True, 1e6 if arch == "qwen2" else 1e5, arch == "qwen2")
    batch = lm_batch(sequences(src.config.vocab_size, n=3, length=32))
    ours, theirs = engine.logprobs(batch), hf_logprobs(src, batch)
    mask = batch["loss_mask"].bool()
    diff = (ours - theirs)[mask].abs().max().item()
    print(f"{arch} GGUF -> Megatron vs the source model: max |log-prob diff| {diff:.1e} (std {ours[mask].std():.2f})")
    assert diff < 1e-4, diff
    assert ours[mask].std() > 0.5  # far from uniform: the comparison has teeth

    tok_dir = tmp_path / "ckpt" / "tokenizer"
    tc = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert tc["chat_template"] == CHAT and tc["eos_token"] == "<|im_end|>"
    assert json.loads((tok_dir / "generation_config.json").read_text()) == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    cfg = json.loads((tok_dir / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["tie_word_embeddings"]
    assert cfg["architectures"] == [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[arch]]
    from r1mega.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tok_dir)  # what data.tokenizer_path gets
    assert tok.convert_ids_to_tokens(tok.encode(" the")) == ["Ġthe"]  # the merges came through


def test_a_directory_with_one_gguf_file_is_accepted_and_two_are_refused(tmp_path):
    from r1mega.bridge import BridgeError
    from r1mega.bridge.gguf import find_gguf

    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    assert find_gguf(tmp_path) == tmp_path / "a.gguf"
    (tmp_path / "b.gguf").write_bytes(b"GGUF")
    with pytest.raises(BridgeError, match="2 GGUF files"):
        find_gguf(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert find_gguf(tmp_path) is None  # safetensors win: the HF reader's directory


@pytest.mark.parametrize("case", ["missing", "not_gguf", "architecture"])
def test_bad_input_is_one_clean_line(case, tmp_path, capsys):
    f = tmp_path / "model.gguf"
    expected = {"missing": f"--hf {f} does not exist", "not_gguf": "is not a GGUF file (starts with b'{\\n  '",
                "architecture": "GGUF architecture 'phi3' is not supported (supported: llama, qwen2)"}[case]
    if case == "not_gguf":
        f.write_text("{\n  \"not\": \"gguf\"}\n")
    elif case == "architecture":
        w = gguf.GGUFWriter(str(f), "phi3")
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    rc = tools_convert.main(["hf-to-megatron", "--hf", str(f), "--out", str(tmp_path / "ckpt")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("r1mega convert: error: "), err
    assert expected in err, err
    assert not (tmp_path / "ckpt").exists()


def _load(ckpt_root):
    from r1mega.config.model import ModelConfig
    from r1mega.train.checkpoint import CheckpointManager
    from r1mega.train.engine import TrainEngine

    mgr = CheckpointManager(ckpt_root)
    path = mgr.latest()
    saved = CheckpointManager.read_meta(path)["model"]
    import dataclasses

    m = ModelConfig(**{f.name: saved[f.name] for f in dataclasses.fields(ModelConfig) if f.name in saved})
    engine = TrainEngine(m, ParallelConfig(), None, mtp=False)
    mgr.load(engine, path, load_optimizer=False)
    return m, engine
