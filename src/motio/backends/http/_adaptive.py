"""A concurrency gate whose limit finds a server's knee: every slot busy, nobody waiting.

A stock vLLM never answers 429: it queues without limit, so sending more at
once only shows up as a longer time to first token (TTFT). Against a server
with a hard number of slots every queued request waits for a whole
generation to end, so even a small standing queue doubles the tail of the
first-token latency; too few in flight and slots idle. The target is the
knee: in flight = the server's capacity, its queue empty. Three signals:
the server's counts when it publishes them, refusals, first-token latency.

- **The server's own counts** (``_metrics.py``: vLLM, SGLang, TGI and
  llama.cpp publish how many requests run and how many wait), read at most
  every ``SCRAPE_INTERVAL`` seconds. While they are fresh they judge, once
  per reading, with ``ours`` = this gate's requests in flight (a Ray
  coordinator passes every worker's), ``share`` = ours / (running +
  waiting) and ``others`` = running + waiting - ours (other clients):

  * Requests wait while the server runs as many as it has in the last
    ``_RUNNING_READINGS`` readings: it is full, its capacity ``running``.
    (Waiting alone is not enough: a request that arrives during a step
    waits for the next one even with slots free, and requests of equal
    length end and are replaced together.) The limit drops to ``min(limit,
    ours) - waiting x share`` (two clients each give up their part of the
    queue, and together empty it) and that level is held.
  * Nothing waits and the limit binds (ours within ``slack`` of it): with a
    known capacity, grow by the free slots ``capacity - others - ours``
    (other clients left) in one step; at the capacity hold, and probe
    above it after ``_PROBE_EVERY`` readings, since a server's capacity may
    grow (more KV cache free) and a reading may have been wrong (one that
    caught requests arriving mid-step while the server ran all it had
    looks full). A probe that queued settles back at the capacity and
    doubles the readings before the next (each probe queues a request for
    a reading or two); a probe the server ran with nothing waiting proves
    the capacity was higher: the next comes one reading later and goes
    twice as far (up to an eighth of the limit). Never seen full, grow by
    ``_METRICS_GROWTH`` a reading.
  * Slow start's latency rounds (below) still grow the limit, faster than
    readings come, but never past one growth step above the most a reading
    showed running with nothing waiting, and cut nothing: the next reading
    says how long the queue is, where latency, which also grows with the
    batch, would guess.

- **Overload** (429, 503, 529, or a refused connection while others are in
  flight): halve the limit, at most once per round, and remember the level
  where it happened (``ceiling``), lowered by one for every further refusal
  of the same burst: a server of capacity C refuses about L - C of L sent.
  After a calm round the limit returns in one step to just below it, and
  probes one above every ``_PROBE_EVERY`` calm rounds. A refused probe is
  no news: back to the level known to work without halving, and the next
  probe waits twice as long. (On a small batch against a 429 server,
  capacity 16, ``Retry-After: 1``, 300 requests of 0.5 s, a halving per
  probe plus its 1 s waits cost more than the whole batch.)

- **First-token latency**, when the server publishes no counts. A round is
  ``limit`` first-token samples (half that in slow start and while the
  baseline is measured), and only of requests sent at the current limit:
  after any change, samples of requests sent before it are dropped (at
  most a round's worth, or as many as were in flight), since they report
  the old level's queue. Samples from another process (a Ray worker's
  ``SharedGate``, a batch every tenth of a second) carry the ``epoch`` of
  the limit that process had applied when it sent the request, and how
  long ago their first token came: every one of an older epoch is
  dropped, and rates and rounds go by when first tokens came, not by when
  the batch arrived (judged at one instant, a batch cut round after round).

  * Slow start (before the first congestion signal) multiplies the limit
    by ``_SLOW_START_GROWTH`` while the round's 90th percentile stays within
    ``_TOLERANCE`` of the lowest round so far (the percentile, because the
    later requests of a round meet the queue its growth made, the first
    ones the room left before), or its queue is within noise. A queue ends
    it: the limit goes back to the level before the last growth (calm) and
    climbs from there towards where the queue showed, a sixteenth a round.
  * Afterwards the median judges, against ``baseline``, the server's
    latency with no queue. By Little's law a standing queue of E requests
    delays each new one by E / throughput, so ``E = (median - baseline) x
    first tokens per second`` (over the last ``_RATE_WINDOW``). Against a
    continuous-batching server at L > C in flight each new request waits
    about (L - C) / C generation times, which this recovers as L - C. A
    median above ``_QUEUE_TOLERANCE`` x baseline with E >= 1, or a 90th
    percentile above ``_TAIL_TOLERANCE`` x its baseline (against hard slots
    a request or two too many first show there: one that finds every slot
    busy waits a generation) with the median above ``_AT_BASELINE`` x its
    baseline, is a queue: the limit drops by E (at least
    one, at most half), and climbs back a sixteenth a calm round to just
    below where the queue showed (so a cut that noise made is undone);
    above it a probe goes one higher every ``_PROBE_EVERY`` calm rounds,
    and each probe that met no queue doubles the next (up to an eighth of
    the limit). A short queue (under ``_OBVIOUS_QUEUE`` of the limit) is
    cut only when two rounds in a row show it: one slow round on a busy
    client is not a queue.
  * The median misses a short queue against hard slots: requests that
    started together end together, so of L - C too many, each round about
    L - C wait a whole generation and the rest not at all. Once the
    baseline was measured, a round counts its first tokens above
    ``_LONG_WAIT`` x the baseline (median, which a dip still above the
    slots does not move, where its tail would hide the waits): any such
    wait is a queue of at least that many.
  * Calm (median within ``_AT_BASELINE``, or E under half a request): one
    step back up. In between the limit holds: no additive headroom while
    latency is above the baseline. (Gradient2 adds 4 a round, Envoy √L,
    Vegas keeps 3-6 queued: each keeps a small standing queue on purpose,
    which against hard slots is a doubled tail.)

  The baseline comes from slow start's lowest round, and is measured again
  ``_FIRST_MEASURE`` seconds after it, then every ``_MEASURE_EVERY`` seconds
  (give or take ``_MEASURE_JITTER``, drawn each time, so that clients or
  Ray workers do not all dip at once), and whenever the limit moved out of
  ``_BASELINE_SPAN`` of where it was measured (latency grows with the batch
  too): the limit dips by ``_MEASURE_DIP`` for two half rounds, the first
  drains what was sent before, the second's median and tail are the new
  baselines. That is Envoy's adaptive concurrency ``min_rtt`` window and
  Netflix's GradientLimit reset, not a moving average taken at the
  operating point, which would drift up with a standing queue (nor the
  lowest round since, which would drift down with noise).

The limit stays between ``minimum`` and ``maximum``. With ``adaptive=False``
the gate is a plain cross-loop limit of ``initial``.

The gate itself is ``_gate.Gate``: shared by every event loop and thread
using a backend, FIFO, a waiter holds no thread.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..._exceptions import ConfigurationError
from .._gate import Gate

if TYPE_CHECKING:
    from ._metrics import MetricsScraper, ServerLoad

__all__ = ["AdaptiveConcurrency", "ConcurrencySnapshot", "SharedGate", "Signals"]

#: Slow start grows while a round's median is within this factor of the baseline.
_TOLERANCE = 1.5
#: After slow start, a round's median above this factor of the baseline is a queue.
_QUEUE_TOLERANCE = 1.25
#: ...and within this factor the server is at its no-load latency: room to grow.
_AT_BASELINE = 1.1
#: Growth per round before the first congestion signal (below TCP's 2, so
#: the first overshoot sends at most half the capacity in excess).
_SLOW_START_GROWTH = 1.5
#: The tail percentile: what judges a slow-start round (afterwards the
#: median does, and the tail above ``_TAIL_TOLERANCE`` x its baseline is a queue too).
_TAIL_PERCENTILE = 0.9
_TAIL_TOLERANCE = 2.0
#: A first token this many times the measured baseline (median) waited for a slot.
_LONG_WAIT = 3.0
#: Excess (of the limit) a slow-start round must show, beyond one request, to count as a queue.
_SLOW_START_NOISE = 0.05
#: A queue this long (of the limit) is cut at once; a shorter one when two rounds in a row show it.
_OBVIOUS_QUEUE = 0.1
#: Growth per calm round (of the limit) when no level is known yet.
_AFTER_SLOW_START_GROWTH = 1 / 16
#: How many slow-start rounds the first baseline (the lowest median) is taken over.
_BASELINE_ROUNDS = 10
#: Fewest samples a round is judged on, however low the limit.
_MIN_ROUND = 4
#: The deepest single cut for latency.
_MAX_LATENCY_CUT = 0.5
#: Good rounds (or metric readings) spent at the level known to work before probing above it.
_PROBE_EVERY = 4
#: Seconds between two measurements of the baseline, and their relative jitter.
_MEASURE_EVERY = 8.0
_MEASURE_JITTER = 0.3
#: Seconds after slow start ends before the first measurement (its baseline
#: came from few, low-limit rounds), with the same jitter.
_FIRST_MEASURE = 2.0
#: How far the limit may move from where the baseline was measured before
#: it is measured again (as a ratio of the two).
_BASELINE_SPAN = (0.8, 1.25)
#: The part of the limit given up while the baseline is measured.
_MEASURE_DIP = 1 / 8
#: Growth per reading while a server that publishes its counts was never seen full.
_METRICS_GROWTH = 1.25
#: Readings whose running counts tell a full server from one still filling.
_RUNNING_READINGS = 8
#: Seconds over which throughput is counted (first tokens arrive in bursts).
_RATE_WINDOW = 0.25
#: Seconds after which the server's counts are too old to judge by.
_STALE_AFTER = 2.0
#: Epochs a shared gate remembers when it applied (a request in flight
#: longer than the last this many changes is counted in the oldest).
_EPOCHS_KEPT = 64


@dataclass(frozen=True, slots=True)
class ConcurrencySnapshot:
    """The gate at one instant, for a progress line."""

    limit: int
    in_flight: int
    waiting: int
    overloads: int


class AdaptiveConcurrency(Gate):
    """Up to ``limit`` holders at once; the limit adapts (see the module docstring).

    Raises:
        ConfigurationError: bounds that are not 1 <= minimum <= initial <= maximum.
    """

    def __init__(
        self, *, initial: int = 8, minimum: int = 1, maximum: int = 256, adaptive: bool = True
    ) -> None:
        if not 1 <= minimum <= initial <= maximum:
            raise ConfigurationError(
                f"concurrency bounds must satisfy 1 <= minimum <= initial <= maximum, "
                f"got {minimum}, {initial}, {maximum}"
            )
        super().__init__(initial)
        self.minimum, self.maximum, self.adaptive = minimum, maximum, adaptive
        self._samples: list[float] = []
        self._round_started = time.monotonic()
        self._medians: deque[float] = deque(maxlen=_BASELINE_ROUNDS)
        self._baseline: float | None = None
        self._tail_baseline = math.inf  # the same, of the tail (_TAIL_PERCENTILE)
        self._baseline_level = float(initial)  # the limit it was measured at
        self._rate: float | None = None  # first tokens per second, the last _RATE_WINDOW
        self._rate_mark = (time.monotonic(), 0)
        self._counted = 0
        self._slow_start = True
        self._ceiling: float | None = None
        self._cut_this_round = False
        self._overloads = 0
        self._good_rounds = 0
        self._probe_every = _PROBE_EVERY
        self._skip_round = False
        self._cut_at = -math.inf
        self._skipped = 0
        self._skip_budget = 0
        self._epoch = 0
        self._suspect = False  # the last round showed a short queue: the next decides
        self._measured = False  # the baselines come from a measured round
        self._probe_step = 1.0  # how far the next probe above the known level goes
        self._latency_level = False  # the known level is where latency (not a refusal) showed a queue
        self._jump_back = False  # the last cut named a level known to work: return to it in one step
        self._restore: float | None = None  # measuring the baseline: the limit to return to
        self._next_measure = math.inf
        self._random = random.Random()
        self.scraper: MetricsScraper | None = None
        self._capacity: float | None = None  # the server's running count when it last queued
        self._running_seen: deque[float] = deque(maxlen=_RUNNING_READINGS)
        self._proven = 0.0  # the most a reading showed running with nothing waiting
        self._load_at = -math.inf

    def snapshot(self) -> ConcurrencySnapshot:
        with self._lock:
            return ConcurrencySnapshot(self.limit, self._in_flight, len(self._waiters), self._overloads)

    async def acquire(self) -> None:
        scraper = self.scraper
        if scraper is not None:
            scraper.poke()
        await super().acquire()

    def try_acquire(self) -> bool:
        scraper = self.scraper
        if scraper is not None:
            scraper.poke()
        return super().try_acquire()

    @property
    def reads_metrics(self) -> bool:
        """Whether the server's counts judge the limit now (fresh ones arrived)."""
        return time.monotonic() - self._load_at < _STALE_AFTER

    # -- the signals -----------------------------------------------------------------

    def record_first_token(self, seconds: float, *, epoch: int | None = None, age: float = 0.0) -> None:
        """A request got its first content ``seconds`` after it was sent.

        From another process (a Ray worker's gate, batched): ``age``, how
        long ago that first token came, and ``epoch``, this controller's
        :attr:`epoch` that process had applied when it sent the request.
        A batch of samples judged at one instant is judged by when each
        came, and one sent before the last change is known to be old.
        """
        if not self.adaptive:
            return
        scraper = self.scraper
        if scraper is not None:
            scraper.poke()
        with self._lock:
            if not self._slow_start and self.reads_metrics:
                return  # the server's own counts say more than latency
            at = time.monotonic() - age
            # Slow start judges every half round: it has not found the
            # server's level yet, and every round spent low is throughput lost.
            # So does a baseline measurement, which costs throughput.
            self._count_sample(at)
            short = self._slow_start or self._restore is not None
            round_size = max(_MIN_ROUND, self.limit // 2 if short else self.limit)
            if epoch is not None and epoch < self._epoch:
                # Sent at a limit since changed: it shows that limit's queue.
                # Exact, and however many: a worker's samples come a batch
                # at once, and each worker applies a change when it hears of it.
                return
            if self._skip_round and self._skipped_older(seconds, at, round_size, epoch is not None):
                return
            self._samples.append(seconds)
            if len(self._samples) >= round_size:
                self._end_round(at)
                self._admit()

    @property
    def epoch(self) -> int:
        """How many times the limit changed in a way that made the requests
        in flight old (their samples are dropped): a process that sends with
        a limit this controller set tags its samples with the epoch it had."""
        return self._epoch

    def record_overload(self) -> None:
        """The server pushed back (429, 503, 529, refused under load): halve, once per round."""
        if not self.adaptive:
            return
        with self._lock:
            self._overloads += 1
            self._end_measurement()
            if self._cut_this_round:
                # More of the same burst: each request refused beyond the
                # first says the server holds one fewer than we sent.
                if self._ceiling is not None and self._ceiling > self.minimum + 1:
                    self._ceiling -= 1
                    self._limit = min(self._limit, max(float(self.minimum), self._ceiling - 1))
                return
            if self._ceiling is not None and self._limit >= self._ceiling:
                # A probe above the level known to work failed: back to that
                # level, and the next probe waits twice as long.
                self._probe_every *= 2
                self._limit = max(float(self.minimum), self._ceiling - 1)
            else:
                self._ceiling = self._limit
                self._limit = max(float(self.minimum), self._limit / 2)
            self._jump_back = True
            self._latency_level = False
            self._slow_start = False
            self._cut_this_round = True
            self._skip_older()

    def record_load(self, load: ServerLoad, ours: int | None = None, slack: int = 1) -> None:
        """The server's counts (``_metrics.py``), with ``ours`` of its requests
        in flight (default: this gate's); the limit binds when ours is within
        ``slack`` of it (Ray workers' shares are rounded down: one each)."""
        if not self.adaptive:
            return
        with self._lock:
            self._load_at = time.monotonic()
            self._end_measurement()
            held = self._in_flight if ours is None else ours
            self._judge_load(load.running, load.waiting, held, held >= self.limit - slack)
            self._admit()

    def _count_sample(self, at: float) -> None:
        """Keep the throughput (first tokens a second) up to date with a
        first token that came at ``at`` (the lock is held)."""
        self._counted += 1
        since, counted = self._rate_mark
        if at - since >= _RATE_WINDOW:
            # The latest window alone: a ramp's queue is sized by what the
            # server delivers now, not by an average over lower levels.
            self._rate = (self._counted - counted) / (at - since)
            self._rate_mark = (at, self._counted)

    def _skip_older(self) -> None:
        """After a cut (or a dip): judge only requests sent from now on (the lock is held)."""
        self._samples.clear()
        self._skip_round = True
        self._cut_at = time.monotonic()
        self._epoch += 1
        self._skipped = 0
        # Every request in flight now was sent at the old level: a deep
        # queue drains for longer than a round.
        self._skip_budget = self._in_flight

    def _skipped_older(self, seconds: float, at: float, round_size: int, tagged: bool) -> bool:
        """Whether a sample is dropped: its request was sent before the last
        cut, and a round's worth has not been dropped yet (the lock is held).
        A ``tagged`` sample (with its epoch) is of the current epoch: kept."""
        if not tagged and at - seconds < self._cut_at and self._skipped < max(round_size, self._skip_budget):
            self._skipped += 1
            return True
        self._skip_round = False
        self._round_started = at
        return False

    # -- judging by the server's counts -------------------------------------------

    def _judge_load(self, running: float, waiting: float, ours: int, binding: bool) -> None:
        total = running + waiting
        share = min(1.0, ours / total) if total > 0 else 1.0
        # Waiting requests alone do not make a full server: a request that
        # arrived during a step waits for the next one even with slots free
        # (requests of equal length end, and are replaced, together). Full
        # is waiting while running is as high as it has been lately.
        full = waiting >= 1 and bool(self._running_seen) and running >= max(self._running_seen)
        self._running_seen.append(running)
        if waiting < 1:
            self._proven = max(self._proven, running)
        if full:
            if self._ceiling is not None and self._limit >= self._ceiling:
                self._probe_every *= 2  # a probe above the known level queued
            self._capacity = running
            level = max(float(self.minimum), min(self._limit, ours) - math.ceil(waiting * share))
            self._settle_at(level)
            return
        if not binding:
            return  # a limit that does not bind teaches nothing about more
        if self._capacity is not None:
            free = max(self._capacity, running) - max(0.0, total - ours) - ours
            if free >= 1:  # slots other clients left, or never filled
                self._ceiling = max(self._ceiling or 0.0, self._limit + math.floor(free) + 1)
                self._jump_back = True
            # A reading a probe above the capacity made with nothing waiting
            # says the capacity was too low (a request that arrived mid-step
            # looked queued, or the server grew): the next probe comes after
            # one more reading, twice as far (``_grown``), so a false level is
            # left in a few seconds. A probe that queued doubles the wait
            # before the next instead (``_probe_every``).
            if running > self._capacity and waiting < 1:
                self._good_rounds = max(self._good_rounds, self._probe_every - 1)
            self._capacity = max(self._capacity, running)
            self._limit = min(float(self.maximum), self._grown())
        elif self._ceiling is not None and not self._slow_start:
            self._limit = min(float(self.maximum), self._grown())  # the level a refusal named
        elif waiting < 1:
            # Never seen full: it ran all we sent. Grow, less than slow start
            # does (which may run alongside): the next reading shows a queue.
            self._limit = min(float(self.maximum), self._limit * _METRICS_GROWTH)

    def _settle_at(self, level: float) -> None:
        """``level`` is where the server runs full with nothing waiting: go there, and come back to it."""
        self._ceiling = level + 1
        self._limit = level
        self._probe_step = 1.0
        self._jump_back = True
        self._slow_start = False
        self._good_rounds = 0
        self._skip_older()

    # -- judging by first-token latency -------------------------------------------

    def _end_round(self, now: float) -> None:
        """Judge the round's samples; ``now``: when its last first token came."""
        # On the way up a round's later requests meet the queue its growth
        # made, its first ones the room left before: a high percentile
        # shows the queue the level makes. At a steady level every new
        # request waits as long as the next: the median.
        tail = _percentile(self._samples, _TAIL_PERCENTILE)
        figure = tail if self._slow_start else _percentile(self._samples, 0.5)
        # Against hard slots, requests that started together end together:
        # one that finds every slot busy waits for a whole generation, far
        # above the tail's baseline, while the median does not move. L - C
        # too many in flight leave about L - C such waits a round: counted,
        # they size the queue the median cannot see.
        # Judged against a measured round's median, not its tail: a dip
        # still above the slots has a few long waits in its tail, which
        # would hide them for good, while its median stays put. (Not slow
        # start's lowest median: taken at a low limit, the batch's own
        # growth of latency would look like waits.)
        long_waits = 0
        if self._measured and not self._slow_start and self._baseline is not None:
            long_wait = _LONG_WAIT * self._baseline
            long_waits = sum(1 for sample in self._samples if sample > long_wait)
        rate = self._rate or len(self._samples) / max(now - self._round_started, 1e-3)
        self._round_started = now
        self._samples.clear()
        self._cut_this_round = False
        if self._restore is not None:
            # A round at the dipped limit: what the server does unloaded.
            self._baseline, self._tail_baseline, self._baseline_level = figure, tail, self._limit
            self._measured = True
            self._end_measurement()
            self._skip_older()
            return
        baseline = self._current_baseline(figure)
        # Against hard slots a request or two too many shows in the tail
        # first: requests that started together end together, and one that
        # finds them all busy waits for a whole generation.
        # (With the median up too: a tail alone is as often a busy client.)
        tail_queue = long_waits > 0 or (
            tail > _TAIL_TOLERANCE * self._tail_baseline and figure > _AT_BASELINE * baseline
        )
        excess = max((figure - baseline) * rate, float(long_waits))  # Little's law, or the long waits
        suspect, self._suspect = self._suspect, False
        if self._slow_start:
            # A few requests' worth of noise (cold connections, a busy
            # client) must not end slow start far below the server's level.
            if figure <= _TOLERANCE * baseline or excess < max(1.0, _SLOW_START_NOISE * self._limit):
                grown = self._limit * _SLOW_START_GROWTH
                if self.reads_metrics and self._proven:
                    # Latency answers late: never grow past one step above
                    # what a reading showed running with nothing waiting.
                    grown = min(grown, max(self._limit, self._proven * _SLOW_START_GROWTH))
                self._limit = min(float(self.maximum), grown)
                self._skip_older()  # judge the new level by requests sent at it
                return
            if not self._confirmed(excess, suspect):
                return
            if self.reads_metrics:
                # The server's counts will say whether that was a queue (and
                # how long): latency, which also grows with the batch, cuts nothing.
                self._slow_start = False
                return
        elif (figure <= _AT_BASELINE * baseline or excess < 0.5) and not tail_queue:
            grown = min(float(self.maximum), self._grown())
            if grown != self._limit:
                self._limit = grown
                self._skip_older()
            else:
                self._maybe_measure(now)  # once settled, not as it moves
            return
        elif not self._queued(figure, baseline, excess, tail_queue) or not self._confirmed(excess, suspect):
            self._maybe_measure(now)  # latency above baseline: no headroom added
            return
        self._cut_for_queue(max(1.0, excess), now)

    @staticmethod
    def _queued(figure: float, baseline: float, excess: float, tail_queue: bool) -> bool:
        return tail_queue or (figure > _QUEUE_TOLERANCE * baseline and excess >= 1)

    def _confirmed(self, excess: float, suspect: bool) -> bool:
        """Whether a round's queue is cut now: a long one at once, a short one
        only if the round before showed one too (one slow round on a busy
        client is not a queue); otherwise the next round is watched."""
        if suspect or excess >= _OBVIOUS_QUEUE * self._limit:
            return True
        self._suspect = True
        return False

    def _current_baseline(self, figure: float) -> float:
        """The no-load latency to judge ``figure`` by: in slow start the
        lowest round so far, afterwards the last measurement's."""
        if self._slow_start or self._baseline is None:
            self._medians.append(figure)
            if self._baseline is None or figure <= min(self._medians):
                self._baseline_level = self._limit
            self._baseline = self._tail_baseline = min(self._medians)
        # Afterwards only a measurement moves it: the lowest of many noisy
        # rounds would drift down, and every round would look queued.
        return self._baseline

    def _cut_for_queue(self, excess: float, now: float) -> None:
        """Requests are queueing on the server, ``excess`` of them by Little's law: give them up."""
        cut = min(self._limit * _MAX_LATENCY_CUT, excess)
        if self._slow_start:
            # The queue showed on the way up: the level before it is the
            # baseline's (the lowest median), kept; what this round saw is not.
            self._medians.pop()
            self._next_measure = now + _FIRST_MEASURE * self._measure_interval() / _MEASURE_EVERY
        if self._ceiling is not None and self._limit >= self._ceiling:
            self._probe_every *= 2  # a probe above the level known to work queued
        if self._slow_start:
            # The level before the last growth was calm: never below it. A
            # ramp's queue is sized roughly (requests sent together end
            # together, so the late ones wait a whole generation): climb
            # back half the way to where it showed, per calm round.
            level = max(self._limit - cut, self._limit / _SLOW_START_GROWTH)
            self._ceiling = self._limit
        else:
            # At a steady level Little's law sized the cut; climb back from
            # it a little a calm round, no higher than just below where the
            # queue showed (a cut that noise made is undone so).
            level = self._limit - cut
            self._ceiling = self._limit
        self._limit = max(float(self.minimum), level)
        self._probe_step, self._latency_level = 1.0, True
        self._jump_back = False
        self._slow_start = False
        self._skip_older()
        self._good_rounds = 0

    def _grown(self) -> float:
        if self._slow_start:
            return self._limit * _SLOW_START_GROWTH
        below = None if self._ceiling is None else self._ceiling - 1
        if below is None:
            return self._limit + max(1.0, self._limit * _AFTER_SLOW_START_GROWTH)
        if self._limit < below - 0.5:
            self._good_rounds = 0
            if self._jump_back:
                # The last cut named the level known to work (just below
                # where the server refused or queued): return in one step.
                return below
            step = min((below - self._limit) / 2, self._limit * _AFTER_SLOW_START_GROWTH)
            return self._limit + max(1.0, step)
        self._good_rounds += 1
        if self._good_rounds < self._probe_every:
            return self._limit
        self._good_rounds = 0
        # Each probe that found no queue doubles the next (up to an eighth
        # of the limit): a cut that noise made, or a server that grew, is
        # climbed back in a few probes, not one request per probe.
        # (Not above a level a refusal named: there a probe costs refused
        # requests. With the server's counts a probe that queued is seen at
        # the next reading, and settles back at the capacity.)
        step = self._probe_step if self._latency_level or self.reads_metrics else 1.0
        self._probe_step = min(step * 2, max(1.0, self._limit / 8))
        return self._limit + step

    # -- measuring the baseline -------------------------------------------------------

    def _measure_interval(self) -> float:
        return _MEASURE_EVERY * (1 + self._random.uniform(-_MEASURE_JITTER, _MEASURE_JITTER))

    def _maybe_measure(self, now: float) -> None:
        """Dip the limit for two rounds if the baseline is due to be measured again."""
        if self._next_measure == math.inf:  # slow start just ended (by an overload or a reading)
            self._next_measure = now + _FIRST_MEASURE * self._measure_interval() / _MEASURE_EVERY
        # Latency grows with the batch too: a baseline measured far from
        # the limit now would read that growth as a queue.
        moved = not _BASELINE_SPAN[0] <= self._limit / max(self._baseline_level, 1.0) <= _BASELINE_SPAN[1]
        if (now < self._next_measure and not moved) or self.reads_metrics:
            return
        self._next_measure = now + self._measure_interval()
        self._restore = self._limit
        self._limit = max(float(self.minimum), self._limit - max(1.0, self._limit * _MEASURE_DIP))
        self._skip_older()  # what was sent before the dip still meets the old level's queue

    def _end_measurement(self) -> None:
        if self._restore is not None:
            self._limit = max(self._limit, self._restore)
            self._restore = None


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(frozen=True, slots=True)
class Signals:
    """What a process's share of a server saw since it last reported.

    Attributes:
        first_tokens: per request, ``(seconds, epoch, age)``: its first-token
            seconds, the controller's epoch the process had applied when it
            sent the request, and how many seconds ago the first token came
            (at the call that drained it).
        overloads: refusals (429, 503, 529, refused connections under load).
        in_flight: its requests in flight now.
        load: the server's latest counts, if it read them (None: none new).
    """

    first_tokens: list[tuple[float, int, float]]
    overloads: int
    in_flight: int
    load: ServerLoad | None = None


class SharedGate(AdaptiveConcurrency):
    """One process's share of a server's limit, set from outside.

    Used where several processes send to the same server and one controller
    elsewhere owns the limit (motio's Ray workers, ``motio/batch/_ray.py``).

    Signals are kept, not acted on: :meth:`drain` hands them to whoever owns
    the cluster-wide controller, and :meth:`set_limit` applies the share it
    answers with. With a metrics scraper attached (``share_limits`` moves the
    backend's to it), the server's counts go along too.
    """

    def __init__(self, share: int, maximum: int) -> None:
        super().__init__(initial=share, maximum=max(share, maximum), adaptive=False)
        self._first_tokens: list[tuple[float, int, float]] = []  # seconds, epoch, when it came
        self._pushed_back = 0
        self._load: ServerLoad | None = None
        # When each of the controller's epochs was applied here, newest last:
        # a request belongs to the epoch applied when it was sent.
        self._epochs: deque[tuple[float, int]] = deque([(-math.inf, 0)], maxlen=_EPOCHS_KEPT)

    def record_first_token(self, seconds: float, *, epoch: int | None = None, age: float = 0.0) -> None:
        scraper = self.scraper
        if scraper is not None:
            scraper.poke()
        now = time.monotonic()
        sent = now - seconds
        with self._lock:
            # Older than every epoch kept: the oldest (it is old either way).
            sent_in = next((e for applied, e in reversed(self._epochs) if applied <= sent), self._epochs[0][1])
            self._first_tokens.append((seconds, sent_in, now))

    def record_overload(self) -> None:
        with self._lock:
            self._pushed_back += 1
            self._overloads += 1

    def record_load(self, load: ServerLoad, ours: int | None = None, slack: int = 1) -> None:
        with self._lock:
            self._load = load

    def drain(self) -> Signals:
        """The signals since the last call."""
        now = time.monotonic()
        with self._lock:
            first_tokens = [(seconds, epoch, now - at) for seconds, epoch, at in self._first_tokens]
            signals = Signals(first_tokens, self._pushed_back, self._in_flight, self._load)
            self._first_tokens, self._pushed_back, self._load = [], 0, None
            return signals

    def set_limit(self, limit: int, epoch: int | None = None) -> None:
        """Apply a new share (of the controller at ``epoch``); waiters are let in at once if it grew."""
        with self._lock:
            self._limit = float(max(1, min(limit, self.maximum)))
            if epoch is not None and epoch != self._epochs[-1][1]:
                self._epochs.append((time.monotonic(), epoch))
            self._admit()
