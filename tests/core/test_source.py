"""Every stream the core drains in motio implements the one ``Source`` protocol.

The core asks a source to abandon itself and to put its context on a chunk
timeout (``motio/_source.py``); a stream that lost either hook would
silently fall back to waiting, or to an error without provider and model.
"""

from __future__ import annotations

import pytest

from motio._source import Source
from motio._threaded import ThreadedIterator
from motio.backends._base import SlotStream
from motio.backends._llamacpp import _Stream
from motio.backends.http._exchange import _SSEStream


@pytest.mark.parametrize("cls", [ThreadedIterator, SlotStream, _Stream, _SSEStream], ids=lambda c: c.__name__)
def test_every_stream_class_has_every_hook_the_core_asks_for(cls: type) -> None:
    for name in ("__aiter__", "__anext__", "aclose", "abandon", "timeout_error"):
        assert callable(getattr(cls, name, None)), f"{cls.__name__} lacks {name}()"


def test_a_plain_async_generator_is_not_a_source() -> None:
    async def agen() -> object:
        yield 1

    gen = agen()
    assert not isinstance(gen, Source)  # no abandon(): closed and waited for instead
    gen.aclose().close()  # never started: nothing to run
