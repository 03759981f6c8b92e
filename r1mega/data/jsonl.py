"""JSON Lines read/write with errors that name the file and line.

One JSON object per line, UTF-8, ``ensure_ascii=False`` (so the Chinese step words stay
readable). Blank lines are skipped on read. Any other problem raises :class:`JsonlError`
with ``path:line: message``. ``.gz`` files are read through gzip.

Files the pipeline appends to while it runs (``metrics.jsonl``, ``prompts.jsonl``) can end in a torn line
when the process is killed mid-write: their readers pass ``torn_tail=True`` (an unterminated last line that
does not parse is dropped with a warning naming the file and line; a bad line anywhere else is still an
error), and their writers open them with :func:`open_append`, which drops such a line before appending (so it
never ends up in the middle, glued to the next row).
"""
from __future__ import annotations

import gzip
import json
import logging
import os
from pathlib import Path
from typing import IO, Iterable, Iterator, Optional, Sequence, Union

PathLike = Union[str, os.PathLike]
log = logging.getLogger(__name__)


class JsonlError(ValueError):
    """A malformed JSONL row (or an unreadable file); the message starts with ``path:line:``."""

    def __init__(self, path: PathLike, line: Optional[int], message: str, unparsable: bool = False):
        self.path, self.line, self.reason = str(path), line, message
        self.unparsable = unparsable  # not JSON (or not UTF-8) at all: what a write cut short leaves
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


def _parse(path: Path, lineno: int, raw: bytes) -> Optional[dict]:
    """The object on one line (None for a blank line); JsonlError naming ``path:lineno`` otherwise."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JsonlError(path, lineno, f"invalid UTF-8 ({e.reason} at byte {e.start})", unparsable=True) from None
    if not text.strip():
        return None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        snippet = text.strip()
        snippet = snippet if len(snippet) <= 60 else snippet[:57] + "..."
        raise JsonlError(path, lineno, f"invalid JSON ({e.msg}, column {e.colno}): {snippet!r}",
                         unparsable=True) from None
    if not isinstance(row, dict):
        raise JsonlError(path, lineno, f"expected a JSON object, got {type(row).__name__}")
    return row


def _warn_torn(path: Path, lineno: int, raw: bytes, why: str) -> None:
    log.warning("%s:%d: dropped a torn last line (%d bytes without a newline: %s; an interrupted write)",
                path, lineno, len(raw), why)


def iter_jsonl(path: PathLike, required: Sequence[str] = (), torn_tail: bool = False) -> Iterator[dict]:
    """Yield the object on each non-blank line of ``path``.

    Raises JsonlError naming the file and 1-based line for invalid JSON, a value that is not an
    object, a missing ``required`` key, or invalid UTF-8. ``torn_tail``: a last line without its newline
    that does not parse is dropped with a warning instead (a file appended to by a process that was killed).
    """
    path = Path(path)
    if not path.is_file():
        raise JsonlError(path, None, "no such file")
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        for lineno, raw in enumerate(f, 1):
            try:
                row = _parse(path, lineno, raw)
            except JsonlError as e:
                if torn_tail and e.unparsable and not raw.endswith(b"\n"):  # only the last line can lack it
                    _warn_torn(path, lineno, raw, e.reason)
                    return
                raise
            if row is None:
                continue
            missing = [k for k in required if k not in row]
            if missing:
                raise JsonlError(path, lineno, f"missing key(s) {', '.join(map(repr, missing))}")
            yield row


def read_jsonl(path: PathLike, required: Sequence[str] = (), torn_tail: bool = False) -> list[dict]:
    """All rows of ``path`` (see :func:`iter_jsonl`)."""
    return list(iter_jsonl(path, required, torn_tail))


def open_append(path: PathLike) -> IO[str]:
    """``path`` opened for appending JSON lines (parents created). If it ends in a line without its newline (the
    writer was killed mid-row), that line is dropped first, with a warning naming the file and line, or, when it
    parses, given its newline: the next row then starts on a line of its own."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size:
        with open(path, "r+b") as f:
            data = f.read()
            if not data.endswith(b"\n"):
                start = data.rfind(b"\n") + 1
                lineno = data.count(b"\n", 0, start) + 1
                try:
                    _parse(path, lineno, data[start:])
                    f.write(b"\n")  # a complete row cut before its newline: keep it
                except JsonlError as e:
                    if not e.unparsable:  # a whole line that is not an object: not ours to drop
                        raise
                    _warn_torn(path, lineno, data[start:], e.reason)
                    f.truncate(start)
    return open(path, "a", encoding="utf-8", newline="\n")


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
