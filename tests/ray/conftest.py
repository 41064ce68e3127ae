"""A real local Ray instance for the suite: ``ray.init(num_cpus=2)``, once.

The command under test runs in a subprocess and joins this instance with
``--ray=ADDRESS``, as a driver joins a cluster; the Python entry point runs
in this process on the same instance. Workers are real Ray actor processes.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray  # installed by the dev extra (motio[ray]): missing, the suite fails loudly


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """The address of a local two-CPU Ray instance started for the session."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def batch_workers() -> set[int]:
    """Pids of the live Ray worker processes that are motio batch workers."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"ray::BatchWorker"):
            pids.add(int(entry.name))
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def workers_connected_to(*ports: int) -> set[int]:
    """Pids of the batch workers holding a TCP connection to 127.0.0.1 at one of ``ports``.

    A run's own workers, for certain: a process titled ``ray::BatchWorker``
    may be another run's (another test session's, on this machine), but only
    a worker of this run streams from this run's servers.
    """
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        host, port = fields[2].split(":")
        if host == "0100007F" and int(port, 16) in ports and fields[3] == "01":  # 127.0.0.1, ESTABLISHED
            inodes.add(f"socket:[{fields[9]}]")
    pids = set()
    for pid in batch_workers():
        if inodes & _open_files(pid):
            pids.add(pid)
    return pids


def _open_files(pid: int) -> set[str]:
    fds = Path(f"/proc/{pid}/fd")
    links = set()
    try:
        for fd in fds.iterdir():
            with contextlib.suppress(OSError):  # closed since it was listed
                links.add(os.readlink(fd))
    except OSError:  # the process is gone
        pass
    return links


def streaming_workers(*ports: int, count: int = 2) -> list[int]:
    """A run's ``count`` workers, once each streams from these servers (bounded), lowest pid first."""
    deadline = time.monotonic() + 60.0
    while len(workers := workers_connected_to(*ports)) < count:
        assert time.monotonic() < deadline, f"{count} workers never streamed from the servers: {workers}"
        time.sleep(0.05)
    assert len(workers) == count, workers
    return sorted(workers)
