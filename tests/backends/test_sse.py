"""SSE framing and decoding: the line grammar, whatever way bytes are split into reads."""

from __future__ import annotations

import pytest

from motio.backends.http._sse import ErrorEvent, SSEDecoder, data_as_json_array, parse_events

STREAM = b'data: {"a": 1}\n\ndata: {"b": 2}\n\n: keep-alive comment\n\ndata: [DONE]\n\n'
EXPECTED = [b'{"a": 1}', b'{"b": 2}', b"[DONE]"]


def _events_in_pieces(stream: bytes, size: int) -> list[bytes | ErrorEvent]:
    decoder = SSEDecoder()
    out: list[bytes | ErrorEvent] = []
    for i in range(0, len(stream), size):
        out += parse_events(decoder.feed(stream[i : i + size]))
    return out + parse_events(decoder.flush())


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000], ids=lambda s: f"reads-of-{s}")
@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_every_split_and_line_end_gives_the_same_events(size: int, line_end: bytes) -> None:
    stream = STREAM.replace(b"\n", line_end)
    assert _events_in_pieces(stream, size) == EXPECTED


def test_data_without_space_and_multiline_data_are_joined() -> None:
    assert parse_events(b"data:x\ndata: y\nid: 7\nretry: 10\n\n") == [b"x\ny"]


def test_error_events_are_marked_and_event_names_reset() -> None:
    out = parse_events(b'event: error\ndata: {"message": "boom"}\n\ndata: ok\n\n')
    assert isinstance(out[0], ErrorEvent) and out[0].data == b'{"message": "boom"}'
    assert out[1] == b"ok"


def test_unterminated_last_event_is_flushed() -> None:
    decoder = SSEDecoder()
    assert parse_events(decoder.feed(b"data: one\n\ndata: two")) == [b"one"]
    assert parse_events(decoder.flush()) == [b"two"]
    assert decoder.flush() == b""


def test_blank_lines_without_data_dispatch_nothing() -> None:
    assert parse_events(b"\n\n\n: comment\n\n") == []


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (b'data: {"a":1}\n\ndata: {"b":2}\n\n', (b'[{"a":1},{"b":2}]', False)),
        (b'data: {"a":1}\n\ndata: [DONE]\n\n', (b'[{"a":1}]', True)),
        (b"data: [DONE]\n\n", (b"[]", True)),
        (b'data: {"a":1}\n\n', (b'[{"a":1}]', False)),
    ],
    ids=["two", "then-done", "only-done", "one"],
)
def test_plain_data_events_become_one_json_array(block: bytes, expected: tuple[bytes, bool]) -> None:
    assert data_as_json_array(block) == expected


@pytest.mark.parametrize(
    "block",
    [
        b": ping\n\ndata: {}\n\n",
        b"data: {}\n\n: ping\n\ndata: {}\n\n",
        b"data: {\ndata: }\n\n",
        b"event: error\ndata: {}\n\n",
        b"data: [DONE]\n\ndata: {}\n\n",
    ],
    ids=["comment-first", "comment-between", "multi-line", "named-event", "done-not-last"],
)
def test_anything_else_is_left_to_the_full_parser(block: bytes) -> None:
    assert data_as_json_array(block) is None
