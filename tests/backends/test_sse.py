"""SSEDecoder: the SSE line grammar, whatever way the bytes are split into reads."""

from __future__ import annotations

import pytest

from motio.backends._sse import ErrorEvent, SSEDecoder

STREAM = b'data: {"a": 1}\n\ndata: {"b": 2}\n\n: keep-alive comment\n\ndata: [DONE]\n\n'
EXPECTED = [b'{"a": 1}', b'{"b": 2}', b"[DONE]"]


def _decode_in_pieces(stream: bytes, size: int) -> list[bytes | ErrorEvent]:
    decoder = SSEDecoder()
    out: list[bytes | ErrorEvent] = []
    for i in range(0, len(stream), size):
        out += decoder.feed(stream[i : i + size])
    return out + decoder.flush()


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000], ids=lambda s: f"reads-of-{s}")
@pytest.mark.parametrize(
    "line_end", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"]
)
def test_every_split_and_line_end_gives_the_same_events(size: int, line_end: bytes) -> None:
    stream = STREAM.replace(b"\n", line_end)
    assert _decode_in_pieces(stream, size) == EXPECTED


def test_data_without_space_and_multiline_data_are_joined() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data:x\ndata: y\nid: 7\nretry: 10\n\n") == [b"x\ny"]


def test_error_events_are_marked_and_event_names_reset() -> None:
    decoder = SSEDecoder()
    out = decoder.feed(b"event: error\ndata: {\"message\": \"boom\"}\n\ndata: ok\n\n")
    assert isinstance(out[0], ErrorEvent) and out[0].data == b'{"message": "boom"}'
    assert out[1] == b"ok"


def test_unterminated_last_event_is_flushed() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: one\n\ndata: two") == [b"one"]
    assert decoder.flush() == [b"two"]
    assert decoder.flush() == []


def test_blank_lines_without_data_dispatch_nothing() -> None:
    assert SSEDecoder().feed(b"\n\n\n: comment\n\n") == []
