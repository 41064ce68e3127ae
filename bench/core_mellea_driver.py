"""mellea 0.8.0's side of the core benchmark; runs in bench/.venv-mellea.

``bench_core.py`` starts this module with the mellea virtual environment's
Python, one job per process, and reads the single JSON object it prints::

    python core_mellea_driver.py stream N RUNS      # one thunk, async for
    python core_mellea_driver.py lifecycle N K RUNS # N thunks of K chunks
    python core_mellea_driver.py memory N K         # bytes per in-flight thunk
    python core_mellea_driver.py bare N RUNS        # bare async for, this process

The thunk is driven exactly as mellea's backends do it (``openai.py``,
``ollama.py``) and as its own ``test/core/test_astream_mock.py`` builds one:
a ``ModelOutputThunk(None)`` with an originating action, the backend's
``process``/``post_process`` coroutines, and ``_gen.generate`` set to a task
running ``send_to_queue(stream, mot)`` with the default chunk timeout.
``process`` is the cheapest faithful one: it appends the ``str`` chunk to
``_underlying_value``, as every mellea backend does for text.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

from core_workload import (
    bare_finish,
    bare_make,
    in_flight_bytes,
    time_lifecycle,
    time_stream,
)
from mellea.core.base import CBlock, GenerateType, ModelOutputThunk
from mellea.helpers.async_helpers import send_to_queue, wait_for_all_mots


async def _append_chunk(mot: ModelOutputThunk, chunk: str) -> None:
    if mot._underlying_value is None:
        mot._underlying_value = ""
    mot._underlying_value += chunk


async def _no_post_process(mot: ModelOutputThunk) -> None:
    return None


def make_thunk(stream: AsyncIterator[str]) -> ModelOutputThunk:
    """Start a mellea thunk on ``stream`` the way its backends do."""
    mot = ModelOutputThunk(None)
    mot._call.action = CBlock("bench")
    mot._gen.process = _append_chunk
    mot._gen.post_process = _no_post_process
    mot._gen.generate = asyncio.create_task(send_to_queue(stream, mot))
    mot._gen.generate_type = GenerateType.ASYNC
    return mot


def _value(mot: ModelOutputThunk) -> str:
    return mot.value or ""


def run_job(args: list[str]) -> dict[str, Any]:
    job, *numbers = args
    ints = [int(a) for a in numbers]
    if job == "stream":
        n, runs = ints
        return time_stream(make_thunk, n, runs).as_dict()
    if job == "lifecycle":
        n, k, runs = ints
        return time_lifecycle(make_thunk, wait_for_all_mots, n, k, runs, _value).as_dict()
    if job == "memory":
        n, k = ints
        return in_flight_bytes(make_thunk, wait_for_all_mots, n, k)
    if job == "bare":
        n, runs = ints
        return time_stream(lambda s: s, n, runs).as_dict()
    if job == "bare-lifecycle":
        n, k, runs = ints
        return time_lifecycle(bare_make, bare_finish, n, k, runs, lambda t: t.result()).as_dict()
    raise SystemExit(f"unknown job {job!r}")


def main() -> None:
    result = run_job(sys.argv[1:])
    result["mellea_version"] = importlib.metadata.version("mellea")
    result["python"] = sys.version.split()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
