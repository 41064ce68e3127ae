"""Server-sent events decoded straight from the bytes an HTTP read returns.

An OpenAI-compatible stream is ``data: {json}\\n\\n`` repeated, ending with
``data: [DONE]``. Splitting each network read into lines once (one C call)
and keeping only the ``data`` payloads costs far less than a text decoder
plus a line iterator per chunk, which is where typed SDK streams spend their
time. The full SSE line grammar is still honoured: CR, LF and CRLF line
ends, comments, multi-line ``data``, ``event`` names, lines split across
reads.
"""

from __future__ import annotations

__all__ = ["SSEDecoder", "ErrorEvent", "data_as_json_array", "parse_events"]


class ErrorEvent:
    """The payload of an SSE event named ``error`` (some servers send these)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"ErrorEvent({self.data!r})"


class SSEDecoder:
    """Incremental SSE framing: ``feed`` bytes, get back the completed events.

    ``feed`` returns the run of complete events in a read as one ``bytes``
    block (LF line ends), keeping an incomplete tail for the next read;
    :func:`data_as_json_array` or :func:`parse_events` then take the block
    apart. Splitting per read instead of per line keeps the per-chunk cost
    in C.
    """

    __slots__ = ("_pending", "_skip_lf")

    def __init__(self) -> None:
        self._pending = b""
        self._skip_lf = False

    def feed(self, chunk: bytes) -> bytes:
        """Add one read; return the complete events it finished (maybe ``b""``)."""
        if self._skip_lf:
            # The previous read ended in CR: if this one starts with LF, the
            # two were one CRLF line end, already counted.
            self._skip_lf = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        buf = self._pending + chunk if self._pending else chunk
        if b"\r" in buf:
            self._skip_lf = buf.endswith(b"\r")
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._pending = buf
            return b""
        self._pending = buf[end + 2 :]
        return buf[: end + 2]

    def flush(self) -> bytes:
        """The unterminated last event, when the stream ends without a blank line."""
        pending, self._pending = self._pending, b""
        return pending + b"\n\n" if pending.strip() else b""


def data_as_json_array(block: bytes) -> tuple[bytes, bool] | None:
    """A block of plain ``data: {...}`` events as one JSON array, in three C calls.

    Returns:
        ``(array, done)``: the payloads as ``[p1,p2,...]`` (``b"[]"`` when
        there are none) and whether ``data: [DONE]`` ended the block; or
        None when the block holds anything else (comments, named or
        multi-line events, a [DONE] that is not last), for
        :func:`parse_events`. A raw newline cannot occur inside one JSON
        payload line, so a newline left after the joins means such a case.
    """
    if not block.startswith(b"data: "):
        return None
    inner = block[6:-2].replace(b"\n\ndata: ", b",")
    done = inner.endswith(b"[DONE]")
    if done:
        inner = inner[:-7] if len(inner) > 6 else b""
    if b"\n" in inner or b"[DONE]" in inner:
        return None
    return b"[" + inner + b"]", done


def parse_events(block: bytes) -> list[bytes | ErrorEvent]:
    """Every event's data in a block, by the full SSE field grammar."""
    out: list[bytes | ErrorEvent] = []
    for text in block.split(b"\n\n"):
        if text.startswith(b"data: ") and b"\n" not in text:
            out.append(text[6:])
        elif (event := _parse_block(text)) is not None:
            out.append(event)
    return out


def _parse_block(block: bytes) -> bytes | ErrorEvent | None:
    """One event's lines: ``data`` joined by newlines, ``event`` named, the rest ignored."""
    data: list[bytes] = []
    event = b""
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[6:] if line.startswith(b"data: ") else line[5:])
        elif line.startswith(b"event:"):
            event = line[6:].strip()
        # Comments (":...") keep proxies from timing out idle streams; "id"
        # and "retry" only matter for reconnecting, which a chat stream never does.
    if not data:
        return None
    payload = b"\n".join(data)
    return ErrorEvent(payload) if event == b"error" else payload
