"""run_sync: one long-lived loop, usable from anywhere, cancellable."""

from __future__ import annotations

import asyncio
import contextvars
import os
import subprocess
import sys
import textwrap
import threading
import warnings

import pytest

from motio import ModelOutputThunk, run_sync
from tests.asyncutil import BOUND, agen, run

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


async def current_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def test_returns_the_result_and_raises_the_error() -> None:
    assert run_sync(asyncio.sleep(0, "result")) == "result"

    async def fail() -> None:
        raise LookupError("inside")

    with pytest.raises(LookupError, match="inside"):
        run_sync(fail())


def test_one_long_lived_loop_is_reused_with_its_thunks() -> None:
    loop = run_sync(current_loop())
    assert run_sync(current_loop()) is loop and loop.is_running()

    async def make() -> ModelOutputThunk[object]:
        return ModelOutputThunk.from_response(agen(["a", "b"]))

    mot = run_sync(make())
    assert run_sync(mot.avalue()) == "ab"  # a later call may await it


def test_rejects_non_coroutines_clearly() -> None:
    with pytest.raises(TypeError, match="coroutine"):
        run_sync(current_loop)  # type: ignore[arg-type]


def test_works_inside_a_running_loop() -> None:
    async def notebook_cell() -> str:
        # Sync library code called from async code: must not deadlock.
        return run_sync(asyncio.sleep(0, "from inside"))

    assert run(notebook_cell()) == "from inside"


def test_nested_inside_itself_without_deadlock() -> None:
    def sync_library_call() -> str:
        return run_sync(asyncio.sleep(0, "inner"))

    async def outer() -> str:
        return sync_library_call() + "+outer"

    async def deeper() -> str:
        return run_sync(outer()) + "+deeper"

    assert run_sync(outer(), timeout=BOUND) == "inner+outer"
    assert run_sync(deeper(), timeout=BOUND) == "inner+outer+deeper"


def test_each_nesting_level_has_its_own_loop_found_from_the_calling_loop() -> None:
    async def loops_down(levels: int) -> list[asyncio.AbstractEventLoop]:
        here = asyncio.get_running_loop()
        if levels == 0:
            return [here]
        return [here, *run_sync(loops_down(levels - 1))]

    first = run_sync(loops_down(2), timeout=BOUND)
    again = run_sync(loops_down(2), timeout=BOUND)
    assert len(set(first)) == 3 and first == again  # one loop per depth, reused
    # Called from a foreign running loop, run_sync uses the root portal.
    assert asyncio.run(asyncio.wait_for(_root_loop_from_a_running_loop(), BOUND)) is first[0]


async def _root_loop_from_a_running_loop() -> asyncio.AbstractEventLoop:
    return run_sync(current_loop(), timeout=BOUND)


def test_contextvars_visible_inside_and_changes_do_not_leak() -> None:
    async def read_and_change() -> str:
        seen = request_id.get()
        request_id.set("changed inside")
        return seen

    token = request_id.set("req-42")
    try:
        assert run_sync(read_and_change()) == "req-42"
        assert request_id.get() == "req-42"
    finally:
        request_id.reset(token)


def test_usable_from_many_threads() -> None:
    results: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        value = run_sync(asyncio.sleep(0, i))
        with lock:
            results.append(value)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=BOUND)
    assert sorted(results) == list(range(16))


def test_timeout_raises_and_cancels_the_coroutine() -> None:
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError, match="0.1"):
        run_sync(forever(), timeout=0.1)
    assert cancelled.wait(BOUND)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_child_after_fork_gets_a_fresh_loop() -> None:
    parent_loop_id = id(run_sync(current_loop()))
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        pid = os.fork()
    if pid == 0:  # child: the parent's loop thread does not exist here
        try:
            ok = run_sync(asyncio.sleep(0, "child ok"), timeout=10)
            os.write(write_fd, ok.encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read_fd) as pipe:
        assert pipe.read() == "child ok"
    assert status == 0 and id(run_sync(current_loop())) == parent_loop_id


def test_ctrl_c_cancels_the_coroutine() -> None:
    script = textwrap.dedent(
        """
        import asyncio, os, signal, sys, threading
        from motio import run_sync

        started = threading.Event()

        async def forever():
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                print("coroutine cancelled", flush=True)
                raise

        threading.Thread(
            target=lambda: started.wait(10) and os.kill(os.getpid(), signal.SIGINT), daemon=True
        ).start()
        try:
            run_sync(forever(), timeout=20)
        except KeyboardInterrupt:
            print("KeyboardInterrupt in caller", flush=True)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert "KeyboardInterrupt in caller" in out.stdout, out.stderr
    assert "coroutine cancelled" in out.stdout, out.stderr


def test_a_coroutines_own_timeout_error_passes_through() -> None:
    from motio import ChunkTimeoutError

    async def times_out() -> None:
        raise ChunkTimeoutError("quiet stream", timeout=0.5, chunks=2)

    with pytest.raises(ChunkTimeoutError, match="quiet stream"):
        run_sync(times_out())
