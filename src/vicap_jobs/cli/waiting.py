"""Following a job from the terminal: poll it until it ends, starting a local worker when none is alive.

``submit ... --wait`` uses this. When no worker has been seen for three heartbeat periods (now, or
later because the last one died) a :class:`LocalWorker` is started for the job and stopped when it
ends, so the embedded default needs nothing else running.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

from sqlalchemy import Engine

from vicap_jobs.db.session import session_scope
from vicap_jobs.db.status import FINISHED_JOB
from vicap_jobs.errors import VicapError
from vicap_jobs.jobs.lifecycle import get_job
from vicap_jobs.jobs.queries import JobSummary, job_summary, summarize
from vicap_jobs.services.workers import live_workers
from vicap_jobs.settings import Settings, get_settings


class LocalWorker:
    """A ``vicap-jobs worker`` subprocess started for one job (``submit ... --wait`` with no worker alive).

    Its log goes to ``$VICAP_HOME/logs/local-worker-<job>.log``; it is stopped (warm shutdown, then
    killed) when the job ends or the caller is interrupted.
    """

    def __init__(self, *, job_id: int, gpu: int | None, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.job_id = job_id
        self.gpu = gpu
        self.name = f"local{os.getpid()}@{socket.gethostname()}"
        self.log_path = self.settings.home / "logs" / f"local-worker-{job_id}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> LocalWorker:
        """Start the worker process (its output goes to ``log_path``)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        where = ["--gpu", str(self.gpu)] if self.gpu is not None else ["--cpu"]
        command = [sys.executable, "-m", "vicap_jobs.cli.main", "worker", *where, "--name", self.name]
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        return self

    def exit_code(self) -> int | None:
        """None while it runs."""
        return None if self.process is None else self.process.poll()

    def stop(self, timeout: float = 60.0) -> None:
        """Warm shutdown (the running chunk finishes), then kill after ``timeout`` seconds."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> LocalWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for_job(
    *,
    db: Engine,
    job_id: int,
    on_progress: Callable[[JobSummary], None] | None = None,
    gpu: int | None = None,
    on_local_worker: Callable[[LocalWorker], None] | None = None,
    poll_s: float = 0.5,
    settings: Settings | None = None,
) -> JobSummary:
    """Poll the job until it ends; returns its final summary (with errors grouped by reason).

    ``on_local_worker`` is told before a local worker starts, so the caller can say so.
    """
    settings = settings or get_settings()
    local: LocalWorker | None = None
    check_every = max(settings.heartbeat_s, 2.0)
    next_check = 0.0
    try:
        while True:
            with session_scope(db) as session:
                job = get_job(session=session, job_id=job_id)
                current = summarize(job)
                final = job_summary(session=session, job_id=job_id) if job.status in FINISHED_JOB else None
            if on_progress is not None:
                on_progress(current)
            if final is not None:
                return final
            now = time.monotonic()
            if now >= next_check:
                next_check = now + check_every
                if local is not None and local.exit_code() is not None:
                    raise VicapError(
                        f"the local worker exited with code {local.exit_code()} before job {job_id} ended; "
                        f"see {local.log_path}"
                    )
                if local is None and not live_workers(db=db):
                    local = LocalWorker(job_id=job_id, gpu=gpu, settings=settings)
                    if on_local_worker is not None:
                        on_local_worker(local)
                    local.start()
            time.sleep(poll_s)
    finally:
        if local is not None:
            local.stop()
