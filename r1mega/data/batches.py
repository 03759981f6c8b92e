"""Token batches for the trainer, each a pure function of (seed, step): resuming at step k
rebuilds exactly the batches an uninterrupted run would have seen, with no iterator state to save.

* :class:`PretrainBatches`: documents of the synthetic corpus mix (``corpus.iter_corpus``),
  tokenised and packed (EOS-separated) into fixed-length sequences; sequence ``i`` of the run is
  built from its own seeded stream.
* :class:`SFTBatches`: prompt/response rows (JSONL), loss on the response only, shuffled per
  epoch by seed, padded to the longest row of the batch (capped at ``seq_length``).
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


class SFTBatches:
    """``rows``: dicts with ``prompt`` (already templated text) and ``response`` text."""

    def __init__(self, tokenizer, rows: Sequence[dict], seq_length: int, global_batch_size: int, seed: int = 0):
        if not rows:
            raise ValueError("SFT data is empty")
        self.tok, self.seq, self.gbs, self.seed = tokenizer, seq_length, global_batch_size, seed
        self.encoded = []
        for r in rows:
            p = tokenizer.encode(r["prompt"])
            resp = tokenizer.encode(r["response"], add_special_tokens=False) + [tokenizer.eos_token_id]
            self.encoded.append((p, resp))

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
        seqs, starts = [], []
        for k in picks:
            p, r = self.encoded[k]
            s = (p + r)[:self.seq + 1]
            seqs.append(s)
            starts.append(min(len(p), len(s) - 1))
        return lm_batch(seqs, pad_id=self.tok.pad_token_id or 0, loss_from=starts)

    def epochs(self, steps: int) -> float:
        return steps * self.gbs / len(self.encoded)


def eval_batch(tokenizer, texts: Sequence[str], seq_length: int) -> dict:
    seqs = [tokenizer.encode(t)[:seq_length + 1] for t in texts]
    return lm_batch(seqs, pad_id=tokenizer.pad_token_id or 0)


def token_count(batch: dict) -> int:
    return int(torch.as_tensor(batch["loss_mask"]).sum())
