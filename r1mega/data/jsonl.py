"""JSON Lines read/write with errors that name the file and line.

One JSON object per line, UTF-8, ``ensure_ascii=False`` (so the Chinese step words stay
readable). Blank lines are skipped on read. Any other problem raises :class:`JsonlError`
with ``path:line: message``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

PathLike = Union[str, os.PathLike]


class JsonlError(ValueError):
    """A malformed JSONL row (or an unreadable file); the message starts with ``path:line:``."""

    def __init__(self, path: PathLike, line: Optional[int], message: str):
        self.path, self.line = str(path), line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


def iter_jsonl(path: PathLike, required: Sequence[str] = ()) -> Iterator[dict]:
    """Yield the object on each non-blank line of ``path``.

    Raises JsonlError naming the file and 1-based line for invalid JSON, a value that is not an
    object, a missing ``required`` key, or invalid UTF-8.
    """
    path = Path(path)
    if not path.is_file():
        raise JsonlError(path, None, "no such file")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise JsonlError(path, lineno, f"invalid UTF-8 ({e.reason} at byte {e.start})") from None
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                snippet = text.strip()
                snippet = snippet if len(snippet) <= 60 else snippet[:57] + "..."
                raise JsonlError(path, lineno, f"invalid JSON ({e.msg}, column {e.colno}): {snippet!r}") from None
            if not isinstance(row, dict):
                raise JsonlError(path, lineno, f"expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise JsonlError(path, lineno, f"missing key(s) {', '.join(map(repr, missing))}")
            yield row


def read_jsonl(path: PathLike, required: Sequence[str] = ()) -> list[dict]:
    """All rows of ``path`` (see :func:`iter_jsonl`)."""
    return list(iter_jsonl(path, required))


def write_jsonl(path: PathLike, rows: Iterable[dict]) -> Path:
    """Write ``rows`` to ``path`` (parents created), atomically: a temp file renamed into place.

    Raises JsonlError naming the row index (as the line it would have had) for a row that is not a
    dict or not JSON-serialisable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for lineno, row in enumerate(rows, 1):
                if not isinstance(row, dict):
                    raise JsonlError(path, lineno, f"row is a {type(row).__name__}, expected a dict")
                try:
                    f.write(json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n")
                except (TypeError, ValueError) as e:
                    raise JsonlError(path, lineno, f"row is not JSON-serialisable: {e}") from None
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
