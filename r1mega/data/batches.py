"""Token batches for the trainer, each a pure function of (seed, step): resuming at step k
rebuilds exactly the batches an uninterrupted run would have seen, with no iterator state to save.

* :class:`PretrainBatches`: documents of the synthetic corpus mix (``corpus.iter_corpus``),
  tokenised and packed (EOS-separated) into fixed-length sequences; sequence ``i`` of the run is
  built from its own seeded stream.
* :class:`SFTBatches`: prompt/response or chat ``messages`` rows (JSONL), loss on the response /
  assistant turns only, shuffled per epoch by seed, padded to the longest row of the batch (capped
  at ``seq_length``).
"""
from __future__ import annotations

import dataclasses
import random
from typing import Optional, Sequence

import torch

from r1mega.data.corpus import CorpusConfig, iter_corpus
from r1mega.train.batching import lm_batch


class PretrainBatches:
    def __init__(self, tokenizer, seq_length: int, global_batch_size: int, seed: int = 0,
                 corpus: Optional[CorpusConfig] = None):
        self.tok, self.seq, self.gbs, self.seed = tokenizer, seq_length, global_batch_size, seed
        self.corpus = corpus or CorpusConfig()

    def sequence(self, index: int) -> list[int]:
        """The ``index``-th packed training sequence (seq_length + 1 tokens: inputs and the shifted labels)."""
        cfg = dataclasses.replace(self.corpus, seed=hash((self.seed, index)) & 0x7FFFFFFF)
        out: list[int] = []
        for doc in iter_corpus(cfg):
            out += self.tok.encode(doc) + [self.tok.eos_token_id]
            if len(out) > self.seq:
                return out[:self.seq + 1]
        raise RuntimeError("corpus ended")  # iter_corpus is endless

    def batch(self, step: int) -> dict:
        seqs = [self.sequence(step * self.gbs + i) for i in range(self.gbs)]
        return lm_batch(seqs, pad_id=self.tok.pad_token_id or 0)


class SFTDataError(ValueError):
    """A bad SFT row; the message starts with where it is (``path:LINE`` or ``row N``)."""


class SFTBatches:
    """SFT rows, each in one of two forms (see docs/data.md, "SFT data"):

    * ``prompt`` + ``response``: loss on the response and the token that ends it (the chat template's
      end-of-turn token under hf_chat, else EOS). With the built-in templates (or no ``renderer``) the
      prompt is the full prompt text, taken as it is (rejection sampling writes it templated); with
      hf_chat a bare question is rendered by the chat template and an already rendered prompt is
      taken as it is.
    * ``messages`` (``[{"role", "content"}, ...]``, optional system turn first, multi-turn): with hf_chat
      the whole conversation is rendered by the chat template and the loss is on exactly the assistant
      turns (content + end-of-turn token); with a built-in template it must be one user and one
      assistant turn: the user's question rendered by the template, the reply as the response (its leading
      ``<think>`` dropped when the template's prompt already ends with one).

    ``where``: a label per row for errors (default ``row N``).
    """

    def __init__(self, tokenizer, rows: Sequence[dict], seq_length: int, global_batch_size: int, seed: int = 0,
                 renderer=None, where: Optional[Sequence[str]] = None):
        if not rows:
            raise ValueError("SFT data is empty")
        self.tok, self.seq, self.gbs, self.seed = tokenizer, seq_length, global_batch_size, seed
        self.renderer = renderer
        self._stops = None
        self.encoded = [self._encode(r, where[i] if where else f"row {i + 1}") for i, r in enumerate(rows)]

    # ---------------------------------------------------------------------------------------- rows
    def _encode(self, row, where: str) -> tuple[list, list]:
        """(token ids, 0/1 loss mask over them) of one row."""
        from r1mega.data.chat import ChatTemplateError

        if not isinstance(row, dict):
            raise SFTDataError(f"{where}: expected an object, got {type(row).__name__}")
        try:
            if "messages" in row:
                return self._encode_messages(row["messages"], where)
            if "prompt" in row and "response" in row:
                return self._encode_pair(row["prompt"], row["response"], where)
        except ChatTemplateError as e:
            raise SFTDataError(str(e)) from None
        raise SFTDataError(f"{where}: an SFT row needs 'messages', or 'prompt' and 'response'; got keys {sorted(row)}")

    def _encode_pair(self, prompt, response, where: str, question: bool = False) -> tuple[list, list]:
        """``question``: ``prompt`` is a bare question (from a messages row), always rendered."""
        for name, v in (("prompt", prompt), ("response", response)):
            if not isinstance(v, str):
                raise SFTDataError(f"{where}: '{name}' must be a string, got {type(v).__name__}")
        r = self.renderer
        if r is None:
            p, end = list(self.tok.encode(prompt)), self.tok.eos_token_id
        elif question or (r.template == "hf_chat" and not r.is_rendered(prompt)):
            p, end = r.render(prompt)[1], r.end_of_turn_id()
        else:
            p, end = r.encode_rendered(prompt), r.end_of_turn_id()
        resp = list(self.tok.encode(response, add_special_tokens=False)) + [end]
        return p + resp, [0] * len(p) + [1] * len(resp)

    def _encode_messages(self, messages, where: str) -> tuple[list, list]:
        from r1mega.data import chat

        r = self.renderer
        hf = r is not None and r.template == "hf_chat"
        msgs = chat.as_messages(messages, r.system_prompt if hf else None, where=where)
        if not hf:
            if [m["role"] for m in msgs] != ["user", "assistant"]:
                name = r.template if r is not None else "none"
                raise SFTDataError(f"{where}: with template {name!r} a 'messages' row must be one user turn and one "
                                   f"assistant turn, got roles {[m['role'] for m in msgs]} (multi-turn and system "
                                   "turns need data.template: hf_chat)")
            reply = msgs[1]["content"]
            if r is not None and r.prefills_think:  # the prompt already opened <think>: the reply continues it
                reply = chat.strip_think_open(reply)
            return self._encode_pair(msgs[0]["content"], reply, where, question=True)
        if self._stops is None:
            self._stops = set(r.stop_token_ids()) | {r.end_of_turn_id()}
        return chat.conversation_ids_and_mask(self.tok, msgs, self._stops, where=where)

    def _order(self, epoch: int) -> list[int]:
        idx = list(range(len(self.encoded)))
        random.Random(f"{self.seed}:{epoch}").shuffle(idx)
        return idx

    def batch(self, step: int) -> dict:
        n = len(self.encoded)
        picks = []
        for i in range(step * self.gbs, (step + 1) * self.gbs):
            epoch, j = divmod(i, n)
            picks.append(self._order(epoch)[j])
        seqs = [self.encoded[k][0][:self.seq + 1] for k in picks]
        batch = lm_batch(seqs, pad_id=self.tok.pad_token_id or 0)
        for i, k in enumerate(picks):  # position t predicts token t+1: its loss counts where that token's does
            m = self.encoded[k][1][1:len(seqs[i])]
            batch["loss_mask"][i, :len(m)] = torch.tensor(m, dtype=batch["loss_mask"].dtype)
        return batch

    def epochs(self, steps: int) -> float:
        return steps * self.gbs / len(self.encoded)


def read_sft_rows(path) -> tuple[list[dict], list[str]]:
    """The rows of an SFT JSONL file and a ``path:LINE`` label for each (for :class:`SFTBatches` errors)."""
    from r1mega.data.jsonl import read_jsonl

    rows = read_jsonl(path)  # (raises JsonlError naming path:LINE for malformed lines)
    with open(path, "rb") as f:
        lines = [n for n, raw in enumerate(f, 1) if raw.decode("utf-8").strip()]
    return rows, [f"{path}:{n}" for n in lines]


def eval_batch(tokenizer, texts: Sequence[str], seq_length: int) -> dict:
    seqs = [tokenizer.encode(t)[:seq_length + 1] for t in texts]
    return lm_batch(seqs, pad_id=tokenizer.pad_token_id or 0)


def token_count(batch: dict) -> int:
    return int(torch.as_tensor(batch["loss_mask"]).sum())
