"""A worker process's heartbeat thread: "I am alive", "my chunk (or job) is alive", and the reaper.

Every ``heartbeat_s`` seconds the thread refreshes the worker's row in the
``workers`` table (``last_seen_at``) and the ``heartbeat_at`` of the chunk the
process is running, even while one long batch (or a model load) holds the
task. Every ``reap_every_s`` it also calls ``reap``: re-enqueue the chunks
whose worker went silent for ``stale_after_s`` (a SIGKILLed or powered-off
worker). So recovery never waits for the broker's visibility timeout (Redis:
hours) and works on the embedded brokers too, which never redeliver.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy import Engine

from vicap_jobs.db.session import session_scope
from vicap_jobs.jobs.chunks import beat_chunk
from vicap_jobs.jobs.lifecycle import beat_job
from vicap_jobs.services import workers

log = logging.getLogger(__name__)


def reap_interval(stale_after_s: float) -> float:
    """How often live workers look for stale chunks: a third of the staleness, at most 30 s."""
    return min(30.0, max(stale_after_s / 3, 1.0))


class Heartbeat:
    """Background heartbeat of one worker process; start it after the fork."""

    def __init__(
        self,
        *,
        db: Engine,
        name: str,
        queues: list[str],
        device: str | None,
        pid: int,
        interval_s: float,
        reap: Callable[[], object] | None = None,
        reap_every_s: float = 30.0,
    ) -> None:
        self.db = db
        self.name = name
        self.queues = queues
        self.device = device
        self.pid = pid
        self.interval_s = interval_s
        self.reap = reap
        self.reap_every_s = reap_every_s
        self._chunk_id: int | None = None
        self._job_id: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_chunk_beat = 0.0

    # -- the running chunk -------------------------------------------------------------

    def set_chunk(self, chunk_id: int | None) -> None:
        """The chunk this process is working on (None when idle)."""
        with self._lock:
            self._chunk_id = chunk_id
            self._last_chunk_beat = 0.0

    def set_job(self, job_id: int | None) -> None:
        """The train/export/evaluate job this process is running (None when idle)."""
        with self._lock:
            self._job_id = job_id

    def beat_job(self) -> None:
        """Refresh the running job's heartbeat (unit "job" kinds)."""
        with self._lock:
            job_id = self._job_id
        if job_id is not None:
            with session_scope(self.db) as session:
                beat_job(session=session, job_id=job_id)

    def beat_chunk(self) -> None:
        """Refresh the running chunk's heartbeat now if the last one is older than half an interval.

        Passed to the runner as its per-batch ``heartbeat`` callback.
        """
        with self._lock:
            chunk_id, due = self._chunk_id, time.monotonic() - self._last_chunk_beat >= self.interval_s / 2
            if chunk_id is not None and due:
                self._last_chunk_beat = time.monotonic()
        if chunk_id is not None and due:
            with session_scope(self.db) as session:
                beat_chunk(session=session, chunk_id=chunk_id)

    # -- the thread ----------------------------------------------------------------------

    def start(self) -> Heartbeat:
        """Record the worker now, then beat from a daemon thread every ``interval_s``."""
        self.beat_worker()
        self._thread = threading.Thread(target=self._run, name=f"vicap-heartbeat-{self.pid}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (waits up to ``timeout`` seconds)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def beat_worker(self) -> None:
        """Refresh this worker's row in ``workers``."""
        workers.record_worker_heartbeat(
            db=self.db, name=self.name, queues=self.queues, device=self.device, pid=self.pid
        )

    def _run(self) -> None:
        # Stagger the first reap so workers started together do not all reap at once.
        next_reap = time.monotonic() + self.reap_every_s * (0.5 + (self.pid % 10) / 20)
        while not self._stop.wait(self.interval_s):
            try:
                self.beat_worker()
                self.beat_chunk()
                self.beat_job()
                if self.reap is not None and time.monotonic() >= next_reap:
                    next_reap = time.monotonic() + self.reap_every_s
                    self.reap()
            except Exception:  # noqa: BLE001 - a store or broker hiccup must not kill the heartbeat
                log.warning("heartbeat of %s failed; retrying in %.0f s", self.name, self.interval_s, exc_info=True)
