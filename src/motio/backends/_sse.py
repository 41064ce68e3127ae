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

__all__ = ["SSEDecoder", "ErrorEvent"]


class ErrorEvent:
    """The payload of an SSE event named ``error`` (some servers send these)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"ErrorEvent({self.data!r})"


class SSEDecoder:
    """Incremental SSE decoder: ``feed`` bytes, get the completed events' data.

    Only what a chat stream needs is kept: each event's ``data`` (lines joined
    by ``\\n``), as ``bytes``, or as an :class:`ErrorEvent` when the event is
    named ``error``. ``id`` and ``retry`` fields and comments are ignored.
    """

    __slots__ = ("_pending", "_data", "_event", "_skip_lf")

    def __init__(self) -> None:
        self._pending = b""
        self._data: list[bytes] = []
        self._event: bytes | None = None
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[bytes | ErrorEvent]:
        """Decode one read; return the data of every event it completed."""
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
        lines = buf.split(b"\n")
        self._pending = lines.pop()
        out: list[bytes | ErrorEvent] = []
        data = self._data
        for line in lines:
            if line.startswith(b"data:"):
                data.append(line[6:] if line.startswith(b"data: ") else line[5:])
            elif not line:
                if data:
                    out.append(self._dispatch(data))
                    data = self._data = []
                else:
                    self._event = None
            else:
                self._field(line)
        return out

    def flush(self) -> list[bytes | ErrorEvent]:
        """Return an event left unterminated when the stream ended."""
        out = self.feed(b"\n\n") if self._pending or self._data else []
        self._pending = b""
        return out

    def _dispatch(self, data: list[bytes]) -> bytes | ErrorEvent:
        payload = data[0] if len(data) == 1 else b"\n".join(data)
        event, self._event = self._event, None
        if event == b"error":
            return ErrorEvent(payload)
        return payload

    def _field(self, line: bytes) -> None:
        if line.startswith(b"event:"):
            self._event = line[6:].strip()
        # Comments (":...") keep proxies from timing out idle streams; "id"
        # and "retry" only matter for reconnecting, which a chat stream never does.
