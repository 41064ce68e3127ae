"""The one batch job (``motio.batch._job``) and the runner interface it drives.

Against the scripted server on loopback, through a real ``OpenAIBackend``
and a real results file: what the command and ``motio.batch.run`` share.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from motio import batch, run_sync
from motio.backends import OpenAIBackend
from motio.batch import Engine, PromptRecord, ResultsFile, ResumeState, RunStats
from motio.batch._job import BatchJob, fill, pending
from motio.batch._runner import Runner
from tests.asyncutil import run
from tests.servers.scripted import ScriptedServer

SRC = Path(__file__).resolve().parents[2] / "src" / "motio"


def records(count: int) -> list[PromptRecord]:
    return [PromptRecord(f"p{i}", i + 1, f"Say {i}.", {}) for i in range(count)]


def test_pending_skips_what_is_answered_or_failed_and_reads_lazily() -> None:
    given = records(4)
    state = ResumeState()
    state.add(given[1].key, True)
    state.add(given[2].key, False)
    taken: list[str | int] = []

    def source() -> Any:
        for record in given:
            taken.append(record.id)
            yield record

    todo = pending(source(), state)
    assert next(todo).id == "p0" and taken == ["p0"]  # lazily: one read per record asked
    assert [r.id for r in todo] == ["p3"]


def test_a_job_writes_each_result_once_counts_it_and_resumes(server: ScriptedServer, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"

    async def one_run(count: int) -> tuple[RunStats | None, list[str]]:
        seen: list[str] = []
        backend = OpenAIBackend(base_url=server.base_url, max_concurrency=4)
        job = BatchJob(stats=RunStats(), in_flight=4)
        try:
            job.open_results(out)
            runner = await job.start(backend, checked=False)
            assert isinstance(runner, Engine) and runner.tasks == 4
            stats = await job.run(iter(records(count)), lambda result, _: seen.append(result["id"]))
        finally:
            job.close()
            await backend.aclose()
        return stats, seen

    first, seen_first = run(one_run(3))
    again, seen_again = run(one_run(5))
    assert first is not None and again is not None
    assert (first.ok, first.failed, len(first.latencies_ms)) == (3, 0, 3)
    assert sorted(seen_first) == ["p0", "p1", "p2"]
    assert sorted(seen_again) == ["p3", "p4"] and again.ok == 2  # the file's answers were skipped
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["id"] for line in lines) == [f"p{i}" for i in range(5)]
    assert len(server.chat_requests) == 5


def test_a_write_that_fails_stops_the_run_with_the_callers_error(server: ScriptedServer) -> None:
    class Full(OSError):
        pass

    class Sink:
        def write(self, data: bytes) -> int:
            raise Full(28, "No space left on device")

        def flush(self) -> None:
            pass

    async def main() -> None:
        backend = OpenAIBackend(base_url=server.base_url)
        job = BatchJob(in_flight=2)
        try:
            job.open_results(Sink())  # type: ignore[arg-type]
            await job.start(backend)
            await job.run(
                iter(records(4)), write_failed=lambda e: RuntimeError(f"cannot write: {e.strerror}")
            )
        finally:
            job.close()
            await backend.aclose()

    with pytest.raises(RuntimeError, match="cannot write: No space left on device"):
        run(main())


def test_run_before_start_is_refused() -> None:
    with pytest.raises(RuntimeError, match=r"start\(backend\) must come before run\(\)"):
        run(BatchJob().run(iter(records(1))))


def test_fill_keeps_every_servers_limit_busy() -> None:
    two = OpenAIBackend("m", base_url=["http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"], max_concurrency=8)
    assert fill(two) == 16
    two.close()


def test_the_engine_is_a_runner_with_the_ray_pools_signature() -> None:
    # RayPool's module imports Ray, so its signature is read from its source.
    tree = ast.parse((SRC / "batch" / "_ray.py").read_text(encoding="utf-8"))
    pool = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "RayPool")
    ray_run = next(n for n in pool.body if isinstance(n, ast.AsyncFunctionDef) and n.name == "run")
    assert [a.arg for a in ray_run.args.args] == list(inspect.signature(Engine.run).parameters)
    assert list(inspect.signature(Engine.run).parameters) == list(inspect.signature(Runner.run).parameters)
    for member in ("endpoint_snapshot", "adaptive_limit"):
        assert any(isinstance(n, ast.FunctionDef) and n.name == member for n in pool.body), member
        assert callable(getattr(Engine, member))


def test_nothing_chooses_a_runner_by_its_class() -> None:
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "isinstance"
            ):
                named = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
                assert not named & {"Engine", "RayPool"}, f"{path}:{node.lineno}"


def test_the_python_api_runs_on_run_syncs_loop_and_starts_no_thread_of_its_own(
    server: ScriptedServer, tmp_path: Path
) -> None:
    async def the_loop() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    portal = run_sync(the_loop())
    before = {t.name for t in threading.enumerate() if t.name.startswith("motio")}
    backend = OpenAIBackend(base_url=server.base_url)
    out = tmp_path / "out.jsonl"
    try:
        results = batch.run([f"Say {i}." for i in range(20)], backend, output=out)
        first = next(results)
        # The batch runs on the portal's loop: no thread of motio's own beside it.
        assert {t.name for t in threading.enumerate() if t.name.startswith("motio")} == before
        rest = list(results)
        # The file is free again as soon as the iteration ended.
        ResultsFile.open(out).close()
    finally:
        backend.close()
    assert len(rest) == 19 and first["error"] is None
    assert run_sync(the_loop()) is portal


def test_the_python_api_works_inside_a_running_loop(server: ScriptedServer) -> None:
    backend = OpenAIBackend(base_url=server.base_url)

    async def notebook_cell() -> list[dict[str, Any]]:
        return list(batch.run(["Say 1.", "Say 2."], backend))  # sync code inside a running loop

    try:
        results = run(notebook_cell())
    finally:
        backend.close()
    assert sorted(r["output"] for r in results) == ["echo: Say 1.", "echo: Say 2."]


def test_stopping_early_stops_the_batch_and_frees_the_file(server: ScriptedServer, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    backend = OpenAIBackend(base_url=server.base_url, max_concurrency=2)
    try:
        for _ in batch.run([f"Say {i}." for i in range(200)], backend, output=out, concurrency=2):
            break
        ResultsFile.open(out).close()  # not locked: the batch stopped before the loop went on
        sent = len(server.chat_requests)
        assert sent < 200
    finally:
        backend.close()
