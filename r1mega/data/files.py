"""Read the rows of a user's data file: JSONL, JSON, Parquet, a Hugging Face ``save_to_disk`` directory, or
anything ``datasets.load_dataset`` reads from local files (builder ``json``, ``parquet``, ``csv``, ...).

:func:`read_rows` returns plain dicts in file order; every problem is a :class:`DataFileError` whose message
starts with the path. Nothing here knows about prompt fields (see :mod:`r1mega.data.sources`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

FORMATS = ("auto", "jsonl", "json", "parquet", "disk", "hf")
FILE_SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}


class DataFileError(ValueError):
    """A data file that cannot be read; the message names the file (and the row where there is one)."""


def detect_format(path: str) -> str:
    """The format of ``path`` from its extension or, for a directory, its contents."""
    p = Path(path)
    if p.is_dir():
        if (p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file():
            return "disk"
        if any(f.suffix in FILE_SUFFIXES for f in p.iterdir()):
            return "dir"
        raise DataFileError(f"{path}: a directory without dataset_info.json / dataset_dict.json (a save_to_disk "
                            f"dataset) or .jsonl/.json/.parquet files")
    fmt = FILE_SUFFIXES.get(p.suffix.lower())
    if fmt is None:
        raise DataFileError(f"{path}: unknown format {p.suffix or '(no extension)'!r}; expected .jsonl, .json, "
                            ".parquet, a save_to_disk directory, or format: hf with a load_dataset builder")
    return fmt


def _json(path: str) -> list:
    from r1mega.data.jsonl import JsonlError, read_jsonl

    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    if not head.startswith(b"["):  # JSON Lines under a .json name
        try:
            return read_jsonl(path)
        except JsonlError as e:
            raise DataFileError(str(e)) from None
    try:
        rows = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataFileError(f"{path}: invalid JSON ({e})") from None
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
    if bad is not None:
        raise DataFileError(f"{path}: row {bad + 1}: expected a JSON object, got {type(rows[bad]).__name__}")
    return rows


def _parquet(path: str) -> list:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # noqa: BLE001 - pyarrow's errors vary; name the file
        raise DataFileError(f"{path}: cannot read as Parquet ({type(e).__name__}: {e})") from None


def _pick_split(ds, path: str, split: Optional[str]):
    """A Dataset from a Dataset or DatasetDict (``split``; default 'train', or the only split)."""
    if not hasattr(ds, "keys"):
        return ds
    names = list(ds.keys())
    want = split or ("train" if "train" in names or len(names) != 1 else names[0])
    if want not in names:
        raise DataFileError(f"{path}: no split {want!r}; the dataset has {names} (set split)")
    return ds[want]


def _disk(path: str, split: Optional[str]) -> list:
    import datasets

    try:
        ds = datasets.load_from_disk(path)
    except Exception as e:  # noqa: BLE001
        raise DataFileError(f"{path}: cannot load the save_to_disk dataset ({type(e).__name__}: {e})") from None
    return _pick_split(ds, path, split).to_list()


def _hf(path: str, builder: str, data_files, split: Optional[str]) -> list:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local files only: never ask the hub
    import datasets

    files = data_files if data_files is not None else path
    missing = [f for f in ([files] if isinstance(files, str) else list(files)) if not Path(f).exists()]
    if missing:
        raise DataFileError(f"{path}: no such file {missing[0]}")
    try:
        ds = datasets.load_dataset(builder, data_files=files, split=split or "train")
    except Exception as e:  # noqa: BLE001
        raise DataFileError(f"{path}: datasets.load_dataset({builder!r}) failed ({type(e).__name__}: {e})") from None
    return _pick_split(ds, path, split).to_list()


def read_rows(path: str, fmt: str = "auto", split: Optional[str] = None, builder: Optional[str] = None,
              data_files=None) -> list[dict]:
    """Every row of ``path`` as a dict. ``fmt``: one of :data:`FORMATS` ('auto' = from the extension; a
    directory of .jsonl/.json/.parquet files is read file by file in name order). ``split``: the split of a
    DatasetDict (save_to_disk / hf). ``builder``/``data_files``: for fmt 'hf' (default builder from the
    extension, data_files = path)."""
    if fmt != "hf" and not Path(path).exists():
        raise DataFileError(f"{path}: no such file or directory")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "dir":
        rows: list = []
        for f in sorted(Path(path).iterdir()):
            if f.suffix in FILE_SUFFIXES:
                rows += read_rows(str(f), FILE_SUFFIXES[f.suffix])
        return rows
    if fmt == "jsonl":
        from r1mega.data.jsonl import JsonlError, read_jsonl

        try:
            return read_jsonl(path)
        except JsonlError as e:
            raise DataFileError(str(e)) from None
    if fmt == "json":
        return _json(path)
    if fmt == "parquet":
        return _parquet(path)
    if fmt == "disk":
        return _disk(path, split)
    if fmt == "hf":
        if builder is None:
            builder = {"jsonl": "json", "json": "json", "parquet": "parquet"}.get(
                FILE_SUFFIXES.get(Path(path).suffix.lower(), ""), Path(path).suffix.lstrip(".").lower() or None)
        if not builder:
            raise DataFileError(f"{path}: format hf needs a builder (json, parquet, csv, text, ...)")
        return _hf(path, builder, data_files, split)
    raise DataFileError(f"{path}: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


__all__ = ["read_rows", "detect_format", "DataFileError", "FORMATS"]
