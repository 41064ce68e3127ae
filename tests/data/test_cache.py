"""The response cache: keys from the canonical body, hits and misses, shared by real processes at once."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from motio.data import ResponseCache, Row, Template, default_cache_path, open_rows, request_key
from tests.cli.conftest import EVENT_TIMEOUT, motio_env

from .conftest import write_parquet

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.7, "max_tokens": 16}


def test_the_key_is_the_canonical_body_without_how_it_travels() -> None:
    key = request_key(BODY)
    assert len(key) == 64 and int(key, 16) >= 0
    assert request_key(dict(reversed(BODY.items()))) == key  # key order does not matter
    assert request_key({**BODY, "stream": True, "stream_options": {"include_usage": True}}) == key
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    different = [
        {**BODY, "model": "other"},
        {**BODY, "messages": [{"role": "user", "content": "hi!"}]},
        {**BODY, "temperature": 0.8},
        {**BODY, "seed": 1},
        {**BODY, "response_format": schema},
    ]
    assert len({key, *map(request_key, different)}) == 1 + len(different)


def test_get_put_counts_and_the_first_answer_stays(tmp_path: Path) -> None:
    with ResponseCache(tmp_path / "sub" / "c.sqlite3") as cache:
        assert cache.get("k") is None
        cache.put("k", {"output": "one", "usage": {"prompt_tokens": 3}})
        cache.put("k", {"output": "two"})
        assert cache.get("k") == {"output": "one", "usage": {"prompt_tokens": 3}}
        assert (cache.hits, cache.misses, len(cache)) == (1, 1, 1)
    with ResponseCache(tmp_path / "sub" / "c.sqlite3") as again:  # another run
        assert again.get("k") == {"output": "one", "usage": {"prompt_tokens": 3}}
        assert (again.hits, again.misses) == (1, 0)
    with pytest.raises(RuntimeError, match="closed"):
        again.get("k")
    again.close()  # twice is fine
    assert sqlite3.connect(tmp_path / "sub" / "c.sqlite3").execute("PRAGMA journal_mode").fetchone() == (
        "wal",
    )


def test_the_default_location_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_path() == tmp_path / "xdg" / "motio" / "responses.sqlite3"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # invalid by the XDG spec
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_path() == tmp_path / "home" / ".cache" / "motio" / "responses.sqlite3"
    monkeypatch.delenv("XDG_CACHE_HOME")
    with ResponseCache() as cache:
        assert cache.path == tmp_path / "home" / ".cache" / "motio" / "responses.sqlite3"
        assert cache.path.is_file()


def _run_through(cache_path: Path, dataset: Path) -> tuple[int, int]:
    """One "run": every row rendered and answered, from the cache when it can. (hits, misses)"""
    template = Template("Classify: {text}", system="Answer pos or neg.")
    with ResponseCache(cache_path) as cache, open_rows(dataset, id_column="id") as rows:
        template.check(rows.columns)
        for row in rows:
            assert isinstance(row, Row)
            body = {"model": "m", "messages": template.prompt(row).messages, "temperature": 0.9}
            key = request_key(body)
            if cache.get(key) is None:
                cache.put(key, {"output": f"answer to {row.values['text']}"})
        return cache.hits, cache.misses


def test_editing_10_rows_of_a_dataset_costs_10_misses_on_the_rerun(tmp_path: Path) -> None:
    rows = [{"id": i, "text": f"review {i}"} for i in range(1000)]
    dataset = write_parquet(tmp_path / "d.parquet", rows, row_group_size=128)
    cache = tmp_path / "c.sqlite3"
    assert _run_through(cache, dataset) == (0, 1000)
    assert _run_through(cache, dataset) == (1000, 0)  # an identical rerun sends nothing
    for index in range(0, 1000, 100):
        rows[index]["text"] += " (edited)"
    write_parquet(dataset, rows, row_group_size=128)
    assert _run_through(cache, dataset) == (990, 10)


# A process of its own: open the cache, say so, wait for the others, then
# write its keys and the shared ones while reading all back.
_WORKER = """
import json, os, sys, time
from pathlib import Path
from motio.data import ResponseCache
path, go, me, shared, own = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
with ResponseCache(path, timeout=60) as cache:
    Path(f"{go}.{me}").touch()
    deadline = time.monotonic() + 60
    while not go.exists():
        assert time.monotonic() < deadline, "never told to go"
        time.sleep(0.005)
    lost = []
    for i in range(max(shared, own)):
        for key in ([f"shared-{i}"] if i < shared else []) + ([f"{me}-{i}"] if i < own else []):
            if cache.get(key) is None:
                cache.put(key, {"by": me, "key": key})
            if cache.get(key) is None:
                lost.append(key)
    print(json.dumps({"lost": lost, "hits": cache.hits, "misses": cache.misses}))
"""


def test_processes_writing_and_reading_at_once_lose_and_corrupt_nothing(tmp_path: Path) -> None:
    path, go, workers, shared, own = tmp_path / "c.sqlite3", tmp_path / "go", 4, 150, 150
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(path), str(go), f"w{n}", str(shared), str(own)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=motio_env(),
        )
        for n in range(workers)
    ]
    try:
        deadline = time.monotonic() + EVENT_TIMEOUT
        while not all(Path(f"{go}.w{n}").exists() for n in range(workers)):
            assert time.monotonic() < deadline, "workers never opened the cache"
            assert all(proc.poll() is None for proc in procs), [proc.communicate() for proc in procs]
            time.sleep(0.01)
        go.touch()  # all at once, on a cache each of them has open
        outputs = [proc.communicate(timeout=EVENT_TIMEOUT) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=EVENT_TIMEOUT)
    assert [proc.returncode for proc in procs] == [0] * workers, outputs
    reports = [json.loads(out) for out, _ in outputs]
    assert all(report["lost"] == [] for report in reports)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    stored = {key: json.loads(value) for key, value in db.execute("SELECT key, value FROM responses")}
    assert len(stored) == shared + workers * own
    assert all(value["key"] == key for key, value in stored.items())
    # Two lookups per key, the second always a hit; a shared key missed by two
    # processes at the same instant is stored once (the first answer stays).
    assert all(report["hits"] + report["misses"] == 2 * (shared + own) for report in reports)
    assert all(report["hits"] >= shared + own for report in reports)
    assert sum(report["misses"] for report in reports) >= shared + workers * own
