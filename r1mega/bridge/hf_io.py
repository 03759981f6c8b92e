"""Hugging Face safetensors checkpoints: a validating, streaming reader and a sharded writer.

The reader only parses headers until a tensor is asked for, checks the directory against the
bridge table *before* any weight is read (missing shard files, names the table does not know,
missing tensors, shape mismatches: each error names the tensor and file), keeps at most two shard
files open, and dequantises DeepSeek FP8 weights on the fly (:mod:`r1mega.bridge.fp8`).
"""
from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import fp8
from .table import BridgeError, BridgeTable

INDEX = "model.safetensors.index.json"
# tensors some checkpoints carry that are not weights
_IGNORED = re.compile(r"(rotary_emb\.inv_freq|\.rotary_emb\..*)$")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


class HFCheckpoint:
    def __init__(self, path: str | os.PathLike, quantization_config: Optional[dict] = None):
        self.dir = Path(path)
        if not self.dir.is_dir():
            raise BridgeError(f"Hugging Face checkpoint directory {self.dir} does not exist")
        self.block = fp8.block_size(quantization_config)
        self.file_of = self._index()
        self.meta = {}  # name -> (shape, dtype string)
        by_file: dict = {}
        for name, f in self.file_of.items():
            by_file.setdefault(f, []).append(name)
        for f, names in by_file.items():
            with safe_open(self.dir / f, framework="pt") as h:
                keys = set(h.keys())
                for n in names:
                    if n not in keys:
                        raise BridgeError(f"{INDEX} maps tensor {n!r} to {f}, but {f} does not contain it")
                    s = h.get_slice(n)
                    self.meta[n] = (tuple(s.get_shape()), s.get_dtype())
        self._open: OrderedDict = OrderedDict()

    def _index(self) -> dict:
        idx = self.dir / INDEX
        if idx.exists():
            weight_map = json.loads(idx.read_text())["weight_map"]
            missing = {}
            for n, f in weight_map.items():
                if not (self.dir / f).exists():
                    missing.setdefault(f, n)
            if missing:
                lines = [f"{f} (holds e.g. {n!r})" for f, n in sorted(missing.items())]
                raise BridgeError(f"{self.dir}: {INDEX} lists {len(missing)} shard file(s) that are missing: " + "; ".join(lines))
            return dict(weight_map)
        files = sorted(p.name for p in self.dir.glob("*.safetensors"))
        if not files:
            raise BridgeError(f"{self.dir}: no *.safetensors files and no {INDEX}")
        out = {}
        for f in files:
            with safe_open(self.dir / f, framework="pt") as h:
                for n in h.keys():
                    if n in out:
                        raise BridgeError(f"tensor {n!r} is in both {out[n]} and {f}")
                    out[n] = f
        return out

    # ---------------------------------------------------------------- checks
    def validate(self, table: BridgeTable, skip_mtp: bool = False) -> None:
        """Raise one :class:`BridgeError` listing every problem (first line: the first problem)."""
        expected = table.hf_shapes()
        for copy, main in table.mtp_copies.items():
            expected[copy] = expected[main]
        n_layers = table.cfg.num_layers
        problems, present = [], set()
        for n, (shape, dtype) in self.meta.items():
            f = self.file_of[n]
            if n.endswith(fp8.SCALE_SUFFIX) and n[:-len(fp8.SCALE_SUFFIX)] in self.meta:
                base = n[:-len(fp8.SCALE_SUFFIX)]
                if self.block is None:
                    problems.append(f"{n} ({f}): FP8 scale tensor but config.json has no quantization_config")
                elif base in expected and shape != fp8.scale_shape(expected[base], self.block):
                    problems.append(f"{n} ({f}): expected shape {fp8.scale_shape(expected[base], self.block)}, got {shape}")
                continue
            if _IGNORED.search(n):
                continue
            m = _LAYER.match(n)
            if n not in expected and m and int(m.group(1)) >= n_layers and (skip_mtp or not table.mtp_layers):
                continue  # an MTP layer of a checkpoint imported without MTP
            if n not in expected:
                problems.append(f"unknown tensor {n!r} in {f} (no bridge rule for a {table.arch} model)")
                continue
            present.add(n)
            if shape != expected[n]:
                problems.append(f"tensor {n!r} in {f}: expected shape {expected[n]} (from config.json), got {shape}")
            if dtype == "F8_E4M3" and n + fp8.SCALE_SUFFIX not in self.meta:
                problems.append(f"tensor {n!r} in {f} is float8 without {n + fp8.SCALE_SUFFIX}")
        missing = [n for n in expected if n not in present and n not in table.mtp_copies]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            problems.append(f"missing tensors: {', '.join(missing[:5])}{more}")
        if problems:
            raise BridgeError(f"{self.dir}: {len(problems)} problem(s) with the checkpoint:\n  " + "\n  ".join(problems))

    # ---------------------------------------------------------------- reading
    def _handle(self, f: str):
        if f in self._open:
            self._open.move_to_end(f)
            return self._open[f]
        while len(self._open) >= 2:
            self._open.popitem(last=False)
        h = self._open[f] = safe_open(self.dir / f, framework="pt")
        return h

    def get(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The tensor (dequantised when it is FP8), as ``dtype``."""
        f = self.file_of[name]
        t = self._handle(f).get_tensor(name)
        if t.dtype == fp8.FP8:
            if self.block is None:
                raise BridgeError(f"tensor {name!r} in {f} is float8 but config.json has no quantization_config")
            scale = self._handle(self.file_of[name + fp8.SCALE_SUFFIX]).get_tensor(name + fp8.SCALE_SUFFIX)
            return fp8.dequantize_blockwise(t, scale, self.block, dtype, name)
        return t.to(dtype)

    def close(self) -> None:
        self._open.clear()


class ShardWriter:
    """Write (name, tensor) pairs into ``model-0000i-of-0000n.safetensors`` shards of at most
    ``max_bytes`` (a single ``model.safetensors`` when everything fits) plus the index."""

    def __init__(self, out: str | os.PathLike, max_bytes: int = 5 << 30):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.pending: dict = {}
        self.size = 0
        self.files: list = []  # (tmp file name, [tensor names])
        self.total = 0

    def add(self, name: str, t: torch.Tensor) -> None:
        nbytes = t.numel() * t.element_size()
        if self.pending and self.size + nbytes > self.max_bytes:
            self._flush()
        self.pending[name] = t.detach().to("cpu", copy=True).contiguous()
        self.size += nbytes
        self.total += nbytes

    def _flush(self) -> None:
        tmp = f".shard-{len(self.files):05d}.safetensors"
        save_file(self.pending, str(self.out / tmp), metadata={"format": "pt"})
        self.files.append((tmp, list(self.pending)))
        self.pending, self.size = {}, 0

    def close(self) -> list:
        if self.pending or not self.files:
            self._flush()
        n = len(self.files)
        if n == 1:
            os.replace(self.out / self.files[0][0], self.out / "model.safetensors")
            (self.out / INDEX).unlink(missing_ok=True)
            return ["model.safetensors"]
        weight_map, names = {}, []
        for i, (tmp, tensors) in enumerate(self.files):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(self.out / tmp, self.out / final)
            names.append(final)
            weight_map.update({t: final for t in tensors})
        (self.out / INDEX).write_text(json.dumps({"metadata": {"total_size": self.total}, "weight_map": weight_map}, indent=2))
        return names

