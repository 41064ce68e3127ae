"""SIGTERM to ``motio run --ray``: the driver stops as on Ctrl-C, and its workers with it."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from tests.cli.conftest import (
    EVENT_TIMEOUT,
    assert_clean,
    complete_lines,
    finish,
    motio_env,
    run_motio,
    start_motio,
    wait_for_results,
    write_prompts,
)
from tests.servers.scripted import running

from .conftest import alive, workers_connected_to
from .test_run_ray import each_id_once, on_ray


def test_sigterm_stops_the_workers_keeps_what_was_written_and_the_rerun_completes(
    tmp_path: Path, ray_address: str
) -> None:
    count = 600
    prompts, out = write_prompts(tmp_path / "p.jsonl", count), tmp_path / "out.jsonl"
    with running(token_time=0.04) as a, running(token_time=0.04) as b:
        argv = ("run", prompts, "-o", out, *on_ray(ray_address, a.base_url, b.base_url))
        proc = start_motio(*argv, "-c", "16")
        wait_for_results(out, 50, proc)
        workers = workers_connected_to(a.port, b.port)
        proc.send_signal(signal.SIGTERM)
        code, _, err = finish(proc, timeout=EVENT_TIMEOUT)
        kept = len(complete_lines(out))
        # The workers were stopped: their processes end, their streams drop.
        deadline = time.monotonic() + EVENT_TIMEOUT
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert workers and not any(alive(pid) for pid in workers), workers
        for server in (a, b):
            server.wait_for(lambda s: s.in_flight == 0, EVENT_TIMEOUT, "every stream dropped")
        done = run_motio(*argv)
    assert code == 143, err
    assert_clean(err)
    assert f"of {count} prompts in" in err and "ray: 2 workers" in err
    assert f"terminated: {kept} new results saved in {out}; run the same command again to resume" in err
    assert done.returncode == 0, done.stderr
    assert f"{kept} already done" in done.stderr
    lines = each_id_once(out, count)
    assert all(line["error"] is None for line in lines)


def _connected(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a TCP connection (v4 or v6) to ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                inodes.add(f"socket:[{fields[9]}]")
    fds = Path(f"/proc/{pid}/fd")
    links = set()
    with contextlib.suppress(OSError):  # the process, or one of its files, is gone
        for fd in fds.iterdir():
            with contextlib.suppress(OSError):
                links.add(os.readlink(fd))
    return bool(inodes & links)


@pytest.mark.parametrize("delay", [0.0, 0.3])
def test_sigterm_while_the_driver_joins_the_cluster_is_exit_143(
    tmp_path: Path, ray_address: str, delay: float
) -> None:
    # ray.init puts SIGTERM handlers of its own in place (they exit with
    # sys.exit); the command's must hold through the join and after it.
    prompts, out = write_prompts(tmp_path / "p.jsonl", 30), tmp_path / "out.jsonl"
    gcs_port = int(ray_address.rsplit(":", 1)[1])
    # The signal may land inside Ray's own code (psutil reading /proc), as
    # Ctrl-C may: a file it was opening is then left to the collector. That
    # ResourceWarning is Ray's; every other warning is still an error.
    env = motio_env()
    env["PYTHONWARNINGS"] += ",ignore::ResourceWarning"
    with running(token_time=0.05) as a:
        argv = ("run", prompts, "-o", out, *on_ray(ray_address, a.base_url))
        proc = start_motio(*argv, env=env)
        deadline = time.monotonic() + EVENT_TIMEOUT
        while not _connected(proc.pid, gcs_port):  # it is joining
            assert time.monotonic() < deadline and proc.poll() is None, "the driver never reached the cluster"
            time.sleep(0.005)
        time.sleep(delay)  # the instant under test, from the first connection to the cluster
        proc.send_signal(signal.SIGTERM)
        code, _, err = finish(proc, timeout=EVENT_TIMEOUT)
        done = run_motio(*argv)
    assert code == 143, err
    assert_clean(err)
    assert "terminated" in err
    assert done.returncode == 0, done.stderr
    each_id_once(out, 30)
