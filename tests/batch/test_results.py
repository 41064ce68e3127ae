"""The results file: resume state, torn-line repair, locking, retry rewrite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from motio.batch._results import NotAResultsFile, ResultsFile, ResultsFileLocked, encode_line


def ok(id_: object, output: str = "text") -> dict[str, object]:
    return {"id": id_, "output": output, "error": None}


def failed(id_: object) -> dict[str, object]:
    return {"id": id_, "output": None, "error": {"type": "ServerError", "message": "boom"}}


def lines_of(path: Path) -> list[dict[str, object]]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "file must stay valid JSONL"
    return [json.loads(line) for line in data.splitlines()]


def test_new_file_is_created_empty_and_removed_if_nothing_was_written(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    results = ResultsFile.open(path)
    try:
        assert (results.state.done, results.state.failed) == (set(), set())
        assert path.read_bytes() == b""
    finally:
        results.close()
    assert not path.exists()  # a run that answered nothing leaves no file behind


def test_an_empty_file_that_existed_before_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"")
    ResultsFile.open(path).close()
    assert path.exists() and path.read_bytes() == b""


def test_a_created_file_with_a_result_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    results = ResultsFile.open(path)
    try:
        results.append(ok(1))
    finally:
        results.close()
    assert [r["id"] for r in lines_of(path)] == [1]


def test_append_then_reopen_knows_done_and_failed(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    results = ResultsFile.open(path)
    for record in (ok(1), failed("b"), ok("ü")):
        results.append(record)
    assert results.written == 3
    results.close()
    results.close()  # idempotent
    again = ResultsFile.open(path)
    try:
        assert again.state.done == {"1", '"ü"'}
        assert again.state.failed == {'"b"'}
    finally:
        again.close()
    assert [r["id"] for r in lines_of(path)] == [1, "b", "ü"]


def test_torn_last_line_is_cut_off_so_appending_stays_valid(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    torn = b'{"id": 3, "output": "half a resu'
    path.write_bytes(encode_line(ok(1)) + encode_line(ok(2)) + torn)
    results = ResultsFile.open(path)
    try:
        assert results.state.done == {"1", "2"}
        assert results.state.torn_bytes == len(torn)
        results.append(ok(3))
    finally:
        results.close()
    assert [r["id"] for r in lines_of(path)] == [1, 2, 3]


@pytest.mark.parametrize("torn", [b"{", b'{"i', b'{"id":4,"output":"x'], ids=["brace", "short", "long"])
def test_any_prefix_of_a_result_line_is_a_torn_write(tmp_path: Path, torn: bytes) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(encode_line(ok(1)) + torn)
    ResultsFile.open(path).close()
    assert [r["id"] for r in lines_of(path)] == [1]


def test_torn_line_of_zero_bytes_is_cut_off(tmp_path: Path) -> None:
    # What a power loss can leave: the file grew but the data never landed.
    path = tmp_path / "out.jsonl"
    path.write_bytes(encode_line(ok(1)) + b"\x00" * 40)
    ResultsFile.open(path).close()
    assert [r["id"] for r in lines_of(path)] == [1]


def test_complete_last_result_missing_its_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(encode_line(ok(1)) + encode_line(ok(2)).rstrip(b"\n"))
    results = ResultsFile.open(path)
    try:
        assert results.state.done == {"1", "2"} and results.state.torn_bytes == 0
        results.append(ok(3))
    finally:
        results.close()
    assert [r["id"] for r in lines_of(path)] == [1, 2, 3]


@pytest.mark.parametrize(
    ("content", "line"),
    [
        (encode_line(ok(1)) + b"garbage\n" + encode_line(ok(2)), 2),
        (encode_line(ok(1)) + b'{"id": 7, "prompt": "a prompt, not a result"}\n', 2),
        (b'{"id": 1, "prompt": "x"}\n{"id": 2, "prompt": "the last line, no newline"}', 1),
        (b'{"prompt": "x"}', 1),
        (encode_line(ok(1)) + b'{"id": 2, "output": "no error key"}\n', 2),
        # A last line without newline that is not JSON is only a torn write if
        # it begins like a result line: a user's one-line note is not one.
        (b"remember the milk", 1),
        (encode_line(ok(1)) + b"a note appended by hand", 2),
        (b"\xef\xbb\xbf", 1),
        (b'{"prompt": "unterminated', 1),
    ],
    ids=[
        "garbage",
        "prompt-line",
        "prompts-file",
        "one-prompt-no-newline",
        "missing-key",
        "one-line-note",
        "note-after-results",
        "bom-only",
        "torn-prompt",
    ],
)
def test_a_file_that_is_not_ours_is_refused_and_left_untouched(
    tmp_path: Path, content: bytes, line: int
) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(content)
    with pytest.raises(NotAResultsFile, match=f"line {line}") as caught:
        ResultsFile.open(path)
    assert caught.value.line == line
    assert path.read_bytes() == content


def test_success_after_failure_counts_as_done(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(encode_line(failed(1)) + encode_line(ok(1)) + encode_line(failed(1)))
    results = ResultsFile.open(path)
    results.close()
    assert results.state.done == {"1"} and results.state.failed == set()


def test_drop_failed_removes_only_those_error_lines(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"".join(encode_line(r) for r in (ok(1), failed(2), failed(3), ok(4))))
    results = ResultsFile.open(path)
    try:
        assert results.drop_failed({"2", "4", "99"}) == 1
        assert results.state.failed == {"3"}
        results.append(ok(2))
    finally:
        results.close()
    assert [(r["id"], r["error"] is None) for r in lines_of(path)] == [
        (1, True),
        (3, False),
        (4, True),
        (2, True),
    ]
    assert not (tmp_path / "out.jsonl.motio-tmp").exists()


def test_second_writer_is_refused_even_after_a_retry_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(encode_line(failed(1)))
    results = ResultsFile.open(path)
    try:
        with pytest.raises(ResultsFileLocked, match="another motio process"):
            ResultsFile.open(path)
        results.drop_failed({"1"})  # the lock must follow the new file
        with pytest.raises(ResultsFileLocked):
            ResultsFile.open(path)
    finally:
        results.close()
    ResultsFile.open(path).close()  # released on close


def test_lock_is_seen_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    results = ResultsFile.open(path)
    code = (
        "import sys\n"
        "from motio.batch._results import ResultsFile, ResultsFileLocked\n"
        "try:\n    ResultsFile.open(sys.argv[1])\n"
        "except ResultsFileLocked:\n    sys.exit(7)\n"
    )
    try:
        done = subprocess.run([sys.executable, "-c", code, str(path)], timeout=60, check=False)
    finally:
        results.close()
    assert done.returncode == 7


def test_lone_surrogate_in_output_falls_back_to_escaped_json() -> None:
    line = encode_line(ok(1, "bad \ud800 text"))
    assert line.endswith(b"\n")
    assert json.loads(line)["output"] == "bad \ud800 text"
