"""How full a server is, read from its Prometheus ``/metrics``.

Serving engines publish how many requests they run and how many wait for a
slot. With those two numbers ``max_concurrency="auto"`` can hold a server at
its knee (every slot busy, nobody waiting: see ``_adaptive.py``) instead of
inferring a queue from first-token latency. The names read, per server kind
(each the sum over its series, since a server labels one per model or engine):

==========  ===================================  ===============================
server      running                              waiting
==========  ===================================  ===============================
vLLM        ``vllm:num_requests_running``        ``vllm:num_requests_waiting``
SGLang      ``sglang:num_running_reqs``          ``sglang:num_queue_reqs``
TGI         ``tgi_batch_current_size``           ``tgi_queue_size``
llama.cpp   ``llamacpp:requests_processing``     ``llamacpp:requests_deferred``
==========  ===================================  ===============================

A ``MetricsScraper`` reads one server's page at most every
``SCRAPE_INTERVAL`` seconds, bounded by ``SCRAPE_TIMEOUT``. It has no thread
or timer: whichever request sees a scrape due starts it as a task on its own
loop (as ``_endpoints.py`` starts its probes), and the reading goes to a
callback (the controller). Found, not given, the URL is ``<origin>/metrics``
of the base URL and is tried once: a 404, an unreachable page or a page
without the names above means "no metrics" and the scraper stops, silently.
Given (``HTTPBackend(metrics_url=...)``), a failure is logged once and
scraping goes on, since the user said the page is there.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = [
    "SCRAPE_INTERVAL",
    "SCRAPE_TIMEOUT",
    "FetchText",
    "ServerLoad",
    "MetricsScraper",
    "metrics_url_of",
    "parse_load",
]

_log = logging.getLogger("motio")

#: Fewest seconds between two scrapes of one server.
SCRAPE_INTERVAL = 0.5
#: Seconds one scrape may take; a slower page is a failed scrape.
SCRAPE_TIMEOUT = 2.0

#: ``await fetch(url)``: the page's HTTP status and text.
FetchText = Callable[[str], Awaitable[tuple[int, str]]]

# Metric name -> which count it is.
_RUNNING, _WAITING = "running", "waiting"
_NAMES: dict[str, str] = {
    "vllm:num_requests_running": _RUNNING,
    "vllm:num_requests_waiting": _WAITING,
    "sglang:num_running_reqs": _RUNNING,
    "sglang:num_queue_reqs": _WAITING,
    "tgi_batch_current_size": _RUNNING,
    "tgi_queue_size": _WAITING,
    "llamacpp:requests_processing": _RUNNING,
    "llamacpp:requests_deferred": _WAITING,
}
# For the cheap first test of a line: most of a page is histograms we skip.
_PREFIXES = tuple(_NAMES)


@dataclass(frozen=True, slots=True)
class ServerLoad:
    """A server's requests at one instant: ``running`` in slots, ``waiting`` for one."""

    running: float
    waiting: float


def parse_load(text: str) -> ServerLoad | None:
    """The running and waiting counts in a Prometheus text page; None without both.

    Only lines that start with a known name are split; each value is summed
    over the metric's series (labels), NaN and unparsable values skipped.
    """
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(_PREFIXES):
            continue
        brace = line.find("{")
        if brace >= 0:
            name, rest = line[:brace], line[line.rfind("}") + 1 :]
        else:
            name, _, rest = line.partition(" ")
        kind = _NAMES.get(name.strip())
        fields = rest.split()
        if kind is None or not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        if value == value:  # not NaN
            sums[kind] = sums.get(kind, 0.0) + value
    if _RUNNING not in sums or _WAITING not in sums:
        return None
    return ServerLoad(sums[_RUNNING], sums[_WAITING])


def metrics_url_of(base_url: str) -> str:
    """Where a server's metrics are found by default: ``<origin>/metrics``
    (vLLM, SGLang, TGI and llama.cpp serve them at the root, not under ``/v1``)."""
    parts = urlsplit(base_url)
    host = parts.netloc.rpartition("@")[2]  # never credentials
    return f"{parts.scheme}://{host}/metrics"


class _State(enum.Enum):
    """A scraper's lifecycle: DISCOVERING -> READING or OFF; GIVEN stays."""

    DISCOVERING = "found, not yet tried"
    READING = "found, and the page has the names"
    GIVEN = "given: scraped whatever it answers"
    OFF = "found missing: never scraped again"


class MetricsScraper:
    """Reads one server's load at most every ``SCRAPE_INTERVAL`` seconds.

    Args:
        url: the metrics page.
        fetch: GETs a URL (the backend's client for this server, on the
            loop of the request that started the scrape).
        on_load: called with each reading (from the scraping task's loop).
        given: the user named the page (failures are logged, not final).
    """

    def __init__(
        self, url: str, fetch: FetchText, on_load: Callable[[ServerLoad], None], *, given: bool = False
    ) -> None:
        self.url = url
        self._fetch = fetch
        self._on_load = on_load
        self._state = _State.GIVEN if given else _State.DISCOVERING
        self._lock = threading.Lock()
        self._due = 0.0
        self._running = False
        self._warned = False
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def active(self) -> bool:
        """Whether this server's metrics are (or may still be) read."""
        return self._state is not _State.OFF

    def poke(self) -> None:
        """Start a scrape on the running loop if one is due (cheap when not)."""
        now = time.monotonic()
        if now < self._due or self._state is _State.OFF:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # a thread without a loop: the next request on a loop scrapes
        with self._lock:
            if self._running or now < self._due:
                return
            self._running = True
            self._due = now + SCRAPE_INTERVAL
        task = loop.create_task(self._scrape())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def set_callback(self, on_load: Callable[[ServerLoad], None]) -> None:
        """Send readings to ``on_load`` from now on (a Ray worker's share takes them over)."""
        self._on_load = on_load

    async def _scrape(self) -> None:
        try:
            load = await self._read()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure is "no reading"
            self._failed(f"{type(exc).__name__}: {exc}".rstrip(": "))
        else:
            if load is not None:
                if self._state is _State.DISCOVERING:
                    self._state = _State.READING
                self._on_load(load)
        finally:
            with self._lock:
                self._running = False

    async def _read(self) -> ServerLoad | None:
        async with asyncio.timeout(SCRAPE_TIMEOUT):
            status, text = await self._fetch(self.url)
        if status != 200:
            self._failed(f"HTTP {status}")
            return None
        load = parse_load(text)
        if load is None:
            self._failed("no running/waiting metric of vLLM, SGLang, TGI or llama.cpp on the page")
        return load

    def _failed(self, reason: str) -> None:
        if self._state is _State.DISCOVERING:
            # Most servers have no such page: "no metrics", without noise.
            _log.debug("%s: no server metrics (%s); concurrency follows first-token latency",
                       self.url, reason)  # fmt: skip
            self._state = _State.OFF
        elif self._state is _State.GIVEN and not self._warned:
            self._warned = True
            _log.warning("%s: cannot read server metrics (%s); retrying every %g s", self.url, reason,
                         SCRAPE_INTERVAL)  # fmt: skip

    async def cancel(self) -> None:
        """Stop the scrapes running on this loop (at close)."""
        loop = asyncio.get_running_loop()
        mine = [t for t in list(self._tasks) if t.get_loop() is loop]
        for task in mine:
            task.cancel()
        await asyncio.gather(*mine, return_exceptions=True)
