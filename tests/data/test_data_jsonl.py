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


# ---- files the pipeline appends to: a torn last line from a kill ---------------------------------------------
ROWS = '{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.25}\n'
TORN = '{"step": 3, "lo'  # the process was killed mid-write


def test_a_torn_last_line_is_dropped_with_a_warning_only_where_allowed(tmp_path, caplog):
    p = tmp_path / "metrics.jsonl"
    p.write_text(ROWS + TORN, encoding="utf-8")
    with pytest.raises(JsonlError, match=rf"^{p}:3: invalid JSON"):
        read_jsonl(p)  # a data file: every line counts
    with caplog.at_level("WARNING"):
        assert [r["step"] for r in read_jsonl(p, torn_tail=True)] == [1, 2]
    assert f"{p}:3: dropped a torn last line" in caplog.text
    p.write_text(ROWS + '{"step": 3, "loss": 0.125}', encoding="utf-8")  # cut just before its newline: whole
    assert [r["step"] for r in read_jsonl(p, torn_tail=True)] == [1, 2, 3]


@pytest.mark.parametrize("text, line", [
    ('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n', 2),  # a bad line in the middle
    (ROWS + TORN + "\n", 3),  # a bad last line that has its newline: not a torn write
    ('{"step": 1}\n[1, 2]', 2),  # a last line that parses but is not an object
])
def test_other_bad_lines_stay_errors_with_torn_tail(tmp_path, text, line):
    p = tmp_path / "metrics.jsonl"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(JsonlError, match=rf"^{p}:{line}: "):
        read_jsonl(p, torn_tail=True)


def test_open_append_drops_a_torn_row_before_appending(tmp_path, caplog):
    """Without it, the next row would be glued to the torn one: one corrupt line in the middle, and a lost row."""
    from r1mega.data.jsonl import open_append

    p = tmp_path / "prompts.jsonl"
    p.write_text(ROWS + TORN, encoding="utf-8")
    with caplog.at_level("WARNING"):
        with open_append(p) as f:
            f.write('{"step": 3, "loss": 0.1}\n')
    assert f"{p}:3: dropped a torn last line" in caplog.text
    assert [r["step"] for r in read_jsonl(p)] == [1, 2, 3]  # strict read: the file is whole again
    p.write_text(ROWS.rstrip("\n"), encoding="utf-8")  # a complete row cut before its newline is kept
    with open_append(p) as f:
        f.write('{"step": 3}\n')
    assert [r["step"] for r in read_jsonl(p)] == [1, 2, 3]
    with open_append(tmp_path / "new" / "m.jsonl") as f:  # a new file
        f.write('{"step": 1}\n')
    assert read_jsonl(tmp_path / "new" / "m.jsonl") == [{"step": 1}]


def test_gzip_files_are_read(tmp_path):
    import gzip

    p = tmp_path / "d.jsonl.gz"
    with gzip.open(p, "wt", encoding="utf-8") as f:
        f.write('{"a": 1}\n{"a": 2\n')
    with pytest.raises(JsonlError, match=rf"^{p}:2: invalid JSON"):
        read_jsonl(p)


def test_a_resumed_metric_log_continues_after_a_torn_row(tmp_path, caplog):
    """A GRPO stage killed mid-row, resumed: its MetricLogger appends to metrics.jsonl; the report reads every
    step (before: the new row was glued to the torn one and silently skipped)."""
    from r1mega.report.collect import read_metrics
    from r1mega.train.logger import MetricLogger

    (tmp_path / "metrics.jsonl").write_text(ROWS + TORN, encoding="utf-8")
    logger = MetricLogger(str(tmp_path), tensorboard=False, progress_bar=False)
    logger.log(3, {"loss": 0.1})
    logger.close()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    assert "metrics.jsonl:3: dropped a torn last line" in caplog.text


def test_grpo_prompt_log_continues_after_a_torn_row(tmp_path):
    from types import SimpleNamespace

    from r1mega.pipeline.grpo import GRPOStage

    p = tmp_path / "prompts.jsonl"
    p.write_text('{"iteration": 1, "ids": ["a"], "sources": ["s"]}\n{"iteration": 2, "ids": ["', encoding="utf-8")
    items = [SimpleNamespace(meta={"id": "b", "source": "s"})]
    GRPOStage._record_prompts(SimpleNamespace(out=tmp_path), 1, items)
    assert [r["iteration"] for r in read_jsonl(p)] == [1, 2]
