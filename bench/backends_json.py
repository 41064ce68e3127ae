"""Which JSON decoder for streamed chat chunks: stdlib json, orjson or msgspec?

Decodes real OpenAI-style chunk payloads (the lines bench/backends_server.py
streams, and the llama.cpp server's shape) and folds each into text the way
OpenAIBackend does, reporting ns per chunk. msgspec is measured twice: to
plain dicts, and typed (a Struct with only the fields motio reads, which
skips building the rest).

    python bench/backends_json.py
"""

# No `from __future__ import annotations` here: msgspec must evaluate the
# annotations of the Structs defined inside _decoders().
import json
import os
import sys
import time
from typing import Any, List, Optional

sys.path.insert(0, os.path.dirname(__file__))
from backends_server import chunk_line  # noqa: E402

__all__ = ["measure"]


def _payloads(n: int) -> list[bytes]:
    return [chunk_line(i)[6:-2] for i in range(n)]


def _fold_dict(chunk: dict[str, Any]) -> Any:
    return chunk["choices"][0]["delta"].get("content")


def _decoders() -> dict[str, Any]:
    found: dict[str, Any] = {"json (stdlib)": lambda p: _fold_dict(json.loads(p))}
    try:
        import orjson

        found["orjson"] = lambda p: _fold_dict(orjson.loads(p))
    except ImportError:
        pass
    try:
        import msgspec
    except ImportError:
        return found
    decode_any = msgspec.json.Decoder().decode
    found["msgspec (dict)"] = lambda p: _fold_dict(decode_any(p))

    class Delta(msgspec.Struct):
        content: Optional[str] = None  # noqa: UP045

    class Choice(msgspec.Struct):
        delta: Optional[Delta] = None  # noqa: UP045
        index: int = 0
        finish_reason: Optional[str] = None  # noqa: UP045

    class Chunk(msgspec.Struct):
        choices: List[Choice] = []  # noqa: UP006
        id: Optional[str] = None  # noqa: UP045
        model: Optional[str] = None  # noqa: UP045

    decode_typed = msgspec.json.Decoder(Chunk).decode

    def typed(p: bytes) -> Any:
        delta = decode_typed(p).choices[0].delta
        return delta.content if delta is not None else None

    found["msgspec (typed Struct)"] = typed
    return found


def _batched(payloads: list[bytes], per_read: int = 280) -> list[bytes]:
    """Payloads joined into JSON arrays, one per 64 KiB network read (~280 chunks)."""
    return [b"[" + b",".join(payloads[i : i + per_read]) + b"]" for i in range(0, len(payloads), per_read)]


def measure(n: int = 200_000, repeats: int = 5) -> dict[str, float]:
    """Best-of-``repeats`` ns per chunk for each available decoder."""
    payloads = _payloads(n)
    results = {}
    for name, fn in _decoders().items():
        results[name] = _best(lambda: [fn(p) for p in payloads], repeats) / n * 1e9
    try:
        from motio.backends.openai._chat import batch_decoder
    except ImportError:
        return results
    decode = batch_decoder()
    if decode is not None:
        arrays = _batched(payloads)

        def per_read() -> None:
            for array in arrays:
                for chunk in decode(array):
                    chunk.choices[0].delta.content
        results["msgspec typed, 1 call/read (motio)"] = _best(per_read, repeats) / n * 1e9
    return results


def _best(fn: Any, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


if __name__ == "__main__":
    results = measure()
    base = results["json (stdlib)"]
    print(f"{'decoder (decode + read the text)':<38}{'ns/chunk':>10}{'vs stdlib':>11}")
    for name, ns in results.items():
        print(f"{name:<38}{ns:>10.0f}{base / ns:>10.2f}x")
