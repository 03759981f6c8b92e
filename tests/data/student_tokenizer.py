"""A student's own tokenizer, not r1mega's: a byte-level BPE trained here with the `tokenizers` library on
other text (its ids differ from the built-in tokenizer's for the same string), Qwen2.5's layout of special
tokens (``<|endoftext|>`` pad, ``<|im_start|>``/``<|im_end|>``, no BOS, ``<|im_end|>`` as EOS) and a ChatML
template that writes a default system turn when the conversation has none (as Qwen2.5's does). ``<think>``
and ``<answer>`` are not tokens of it: they are spelled out in BPE pieces, as in Qwen2.5-Math's vocabulary."""
from __future__ import annotations

from pathlib import Path

STUDENT_SYSTEM = "You are a tiny student. Reason, then answer."
STUDENT_CHATML = ("{%- if messages[0]['role'] != 'system' %}<|im_start|>system\n" + STUDENT_SYSTEM + "<|im_end|>\n"
                  "{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                  "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _corpus() -> list[str]:
    words = ("the a of and to is what how many apples eggs has buys gives loses step answer think so first then "
             "number equal plus minus times each pile bag tom anna you student reason").split()
    return [" ".join(words[(i * 7 + k) % len(words)] for k in range(12)) + f" {i} + {i % 9} = {i + i % 9}."
            for i in range(300)]


def student_tokenizer_dir(out_dir: Path, vocab_size: int = 360) -> Path:
    """Train (under a second, deterministic) and save the student's tokenizer in Hugging Face format."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    raw.train_from_iterator(_corpus(), trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  clean_up_tokenization_spaces=False)
    tok.chat_template = STUDENT_CHATML
    out_dir = Path(out_dir)
    tok.save_pretrained(str(out_dir))
    return out_dir
