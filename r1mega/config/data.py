"""Datasets and tokenizer.

Paths are relative to the working directory. A path written ``stage:NAME/rest`` refers to the
output directory of the earlier pipeline stage NAME (e.g. the samples a rejection-sampling stage
wrote); it is checked against the stage order instead of the file system.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .base import check, check_int, doc


@dataclass
class DataConfig:
    tokenizer_path: Optional[str] = doc(None, "Tokenizer: a tokenizer.json file or a Hugging Face tokenizer directory (None = the built-in tokenizer, see tokenizer_vocab_size).")
    tokenizer_vocab_size: int = doc(512, "Size of the built-in tokenizer (without tokenizer_path): a multiple of 64, trained on first use and cached; at most model.vocab_size. It holds 256 byte symbols, the R1 tags and the ~100 Chinese characters of the tasks; the rest are BPE merges (640 leaves room for as many merges as 512 did before the Chinese questions).")
    train_paths: list[str] = doc([], "Training data files (.jsonl/.parquet) or directories; 'stage:NAME/file' = an earlier stage's output.")
    eval_paths: list[str] = doc([], "Held-out evaluation data files or directories (same forms as train_paths). For GRPO / rejection sampling / eval prompts: eval benchmarks file:NAME, shorthand for eval_sources with the default field names.")
    sources: list[dict] = doc([], "RL / rejection-sampling prompt sources, mixed by weight: mappings with the fields of r1mega.data.sources.SourceSpec (kind file|tasks|gym, path, weight, format, split, prompt_key, messages_key, answer_key, task_type or task_type_key, choices_key, test_key, entry_point_key, tests_key, max_rows, ...). On a GRPO / rejection-sampling stage data.train_paths are file sources with the default field names; with neither, prompts come from data.tasks as before. See docs/data.md.")
    eval_sources: list[dict] = doc([], "Eval prompt sources (same mappings as sources; kind file): each is an eval benchmark file:NAME. With neither these nor eval_paths, eval uses the held-out split of the file sources (heldout_fraction).")
    heldout_fraction: float = doc(0.05, "Share of each file source's rows held out of RL / rejection sampling for eval when no eval file is given (SHA-256 of seed and question; 0 = none held out).")
    tasks: list[str] = doc([], "Built-in synthetic tasks to draw prompts from (see r1mega.data.tasks), used besides/instead of paths.")
    difficulties: list[int] = doc([1, 2, 3], "Difficulty levels (1..5) RL prompts are drawn from, uniformly, for the built-in tasks.")
    zh_prompt_fraction: float = doc(0.0, "Share of the built-in tasks' RL / rejection-sampling prompts asked in Chinese (the same problems, drawn from a separate stream; the language reward with target 'prompt' then asks for a Chinese chain of thought on them).")
    zh_prompt_tasks: list[str] = doc(["arith", "word"], "Task families whose RL / rejection-sampling prompts may be asked in Chinese (zh_prompt_fraction of theirs).")
    template: str = doc("r1_zero", "Prompt template for RL / evaluation / SFT prompts (see r1mega.data.templates: r1_zero, chat, chat_plain, or hf_chat = the tokenizer's own chat template).")
    system_prompt: Optional[str] = doc(None, "hf_chat only: a system turn put before each prompt's messages (unless they have one). None = none (the template's own default, if it has one).")
    think_prefill: bool = doc(False, "hf_chat only: end each prompt with '<think>\\n' after the generation prompt, so the response starts inside the reasoning (templates whose generation prompt already ends with <think>, like DeepSeek-R1's, need not set it; the format/language rewards derive it either way).")
    corpus: dict = doc({}, "Pretraining corpus mix: fields of r1mega.data.corpus.CorpusConfig (plain_weight, r1_weight, qa_weight, nonreasoning_weight, zh_fraction, task_weights, difficulty_weights, ...).")
    seq_length: int = doc(512, "Tokens per training sequence (prompt + response for RL/SFT).")
    split: list[float] = doc([98.0, 2.0, 0.0], "Train/valid/test weights for splitting train_paths (Megatron-style, normalised).")
    shuffle: bool = doc(True, "Shuffle training samples each epoch.")
    max_samples: Optional[int] = doc(None, "Use at most this many training samples (None = all; for debugging).")
    num_workers: int = doc(0, "DataLoader worker processes (0 = load in the main process).")
    seed: int = doc(1234, "Seed for shuffling, splitting and synthetic task generation.")

    def validate(self, where: str = "data") -> None:
        check_int(self.seq_length, f"{where}.seq_length")
        check(isinstance(self.tokenizer_vocab_size, int) and not isinstance(self.tokenizer_vocab_size, bool)
              and self.tokenizer_vocab_size >= 384 and self.tokenizer_vocab_size % 64 == 0,
              f"{where}.tokenizer_vocab_size", f"got {self.tokenizer_vocab_size!r}, expected a multiple of 64, at least 384 (256 bytes, tags and the tasks' characters are fixed)")
        check(len(self.split) == 3 and all(w >= 0 for w in self.split) and self.split[0] > 0, f"{where}.split",
              f"got {self.split!r}, expected three non-negative weights [train, valid, test] with train > 0")
        check_int(self.max_samples, f"{where}.max_samples", allow_none=True)
        check_int(self.num_workers, f"{where}.num_workers", minimum=0)
        check_int(self.seed, f"{where}.seed", minimum=0)
        check(isinstance(self.difficulties, list) and self.difficulties and all(d in (1, 2, 3, 4, 5) for d in self.difficulties),
              f"{where}.difficulties", f"got {self.difficulties!r}, expected a non-empty list of levels from 1..5")
        check(isinstance(self.zh_prompt_fraction, (int, float)) and not isinstance(self.zh_prompt_fraction, bool)
              and 0 <= self.zh_prompt_fraction <= 1, f"{where}.zh_prompt_fraction",
              f"got {self.zh_prompt_fraction!r}, expected a number in [0, 1]")
        check(isinstance(self.zh_prompt_tasks, list) and all(t in ("arith", "word") for t in self.zh_prompt_tasks),
              f"{where}.zh_prompt_tasks", f"got {self.zh_prompt_tasks!r}, expected tasks from ('arith', 'word')")
        from r1mega.data.corpus import CorpusConfig
        from r1mega.data.templates import TEMPLATE_NAMES

        check(isinstance(self.corpus, dict), f"{where}.corpus", f"got {self.corpus!r}, expected a mapping")
        import dataclasses as _dc

        known = {f.name for f in _dc.fields(CorpusConfig)}
        for k in self.corpus:
            check(k in known, f"{where}.corpus.{k}", f"unknown corpus field; expected one of {sorted(known)}")
        CorpusConfig(**self.corpus).validate(f"{where}.corpus")

        check(self.template in TEMPLATE_NAMES, f"{where}.template", f"got {self.template!r}, expected one of {list(TEMPLATE_NAMES)}")
        check(self.system_prompt is None or isinstance(self.system_prompt, str), f"{where}.system_prompt",
              f"got {self.system_prompt!r}, expected a string or null")
        check(isinstance(self.think_prefill, bool), f"{where}.think_prefill", f"got {self.think_prefill!r}, expected true/false")
        for name in ("system_prompt", "think_prefill"):
            check(not getattr(self, name) or self.template == "hf_chat", f"{where}.{name}",
                  f"got {getattr(self, name)!r}, but it applies to template 'hf_chat' only (template is {self.template!r})")
        check(isinstance(self.heldout_fraction, (int, float)) and not isinstance(self.heldout_fraction, bool)
              and 0 <= self.heldout_fraction < 1, f"{where}.heldout_fraction",
              f"got {self.heldout_fraction!r}, expected a number in [0, 1)")
        from r1mega.data.sources import parse_sources

        parse_sources(self.sources, f"{where}.sources")
        evs = parse_sources(self.eval_sources, f"{where}.eval_sources")
        for i, s in enumerate(evs):
            check(s.kind == "file", f"{where}.eval_sources[{i}].kind", f"got {s.kind!r}, expected 'file' (eval has its own built-in benchmarks)")
        for name in ("train_paths", "eval_paths", "tasks"):
            for i, item in enumerate(getattr(self, name)):
                check(isinstance(item, str) and item.strip() != "", f"{where}.{name}[{i}]", f"got {item!r}, expected a non-empty string")
