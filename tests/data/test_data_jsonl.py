import pytest

from r1mega.data.jsonl import JsonlError, iter_jsonl, read_jsonl, write_jsonl


def test_round_trip(tmp_path):
    rows = [{"id": "a", "prompt": "第1步 <think>", "n": 1}, {"id": "b", "x": [1, 2]}]
    p = write_jsonl(tmp_path / "sub" / "d.jsonl", rows)
    assert read_jsonl(p) == rows
    assert "第1步" in p.read_text(encoding="utf-8")  # not \\u-escaped
    assert not list(tmp_path.glob("sub/*.tmp"))


def test_blank_lines_skipped(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"a": 1}\n\n   \n{"a": 2}\n', encoding="utf-8")
    assert read_jsonl(p) == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize("bad, line, what", [
    ('{"a": 1}\n{"a": 2\n{"a": 3}\n', 2, "invalid JSON"),
    ('{"a": 1}\n\n[1, 2]\n', 3, "expected a JSON object"),
    ('{"a": 1}\n{"b": 1}\n', 2, "missing key(s) 'a'"),
])
def test_malformed_row_names_file_and_line(tmp_path, bad, line, what):
    p = tmp_path / "broken.jsonl"
    p.write_text(bad, encoding="utf-8")
    with pytest.raises(JsonlError) as e:
        read_jsonl(p, required=["a"])
    assert str(e.value).startswith(f"{p}:{line}: ")
    assert what in str(e.value)
    assert e.value.line == line and e.value.path == str(p)


def test_invalid_utf8_and_missing_file(tmp_path):
    p = tmp_path / "bin.jsonl"
    p.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    with pytest.raises(JsonlError, match=r"bin.jsonl:2: invalid UTF-8"):
        read_jsonl(p)
    with pytest.raises(JsonlError, match="no such file"):
        list(iter_jsonl(tmp_path / "nope.jsonl"))


def test_write_bad_row(tmp_path):
    with pytest.raises(JsonlError, match=r"out.jsonl:2: row is not JSON-serialisable"):
        write_jsonl(tmp_path / "out.jsonl", [{"a": 1}, {"a": object()}])
    with pytest.raises(JsonlError, match=r"out.jsonl:1: row is a list"):
        write_jsonl(tmp_path / "out.jsonl", [[1]])
    assert not (tmp_path / "out.jsonl").exists()
