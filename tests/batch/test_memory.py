"""What a batch keeps per prompt: nothing that waits for the garbage collector.

``motio run`` makes full collections rare (``cli/_run.py`` ``_tune_gc``), so
a reference cycle per request would be memory that grows with the run: a
thunk, its task, its fold, kept until a collection that comes every few
hundred thousand prompts.
"""

from __future__ import annotations

import gc

from motio import ModelOutputThunk, batch
from motio.backends import OpenAIBackend
from tests.servers.scripted import ScriptedServer


def test_answered_requests_leave_no_reference_cycle(server: ScriptedServer) -> None:
    backend = OpenAIBackend(base_url=server.base_url, max_concurrency=4)
    try:
        list(batch.run(["warm"] * 4, backend))  # the backend's own objects made once
        gc.collect()
        gc.disable()
        try:
            results = list(batch.run([f"prompt {i}" for i in range(20)], backend, concurrency=4))
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            cyclic = [obj for obj in gc.garbage if isinstance(obj, ModelOutputThunk)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    finally:
        backend.close()
    assert len(results) == 20 and all(r["error"] is None for r in results)
    assert cyclic == []
