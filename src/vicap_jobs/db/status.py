"""The status values the store allows, as named constants (the CHECK constraints are built from them).

One meaning per value:

- a **job** is ``queued`` (waiting for a worker), ``running`` (a worker started it), or finished:
  ``succeeded``, ``failed`` (with ``jobs.error``) or ``cancelled``;
- a **chunk** (a partition of a caption or evaluate job) is ``queued``, ``running`` (claimed by
  ``job_chunks.worker_host``), or finished: ``done``, ``failed`` (given up, with ``job_chunks.error``)
  or ``cancelled``;
- a **caption** row is ``ok`` (has text) or ``error`` (has a reason).

``StrEnum`` members are plain strings, so they compare, bind and serialize as the stored text.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ChunkStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class CaptionStatus(StrEnum):
    OK = "ok"
    ERROR = "error"


#: Jobs a worker may still pick up or is working on.
OPEN_JOB: tuple[JobStatus, ...] = (JobStatus.QUEUED, JobStatus.RUNNING)
#: Jobs that will not change any more (except through `jobs retry`).
FINISHED_JOB: tuple[JobStatus, ...] = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
#: Chunks still to be captioned.
OPEN_CHUNK: tuple[ChunkStatus, ...] = (ChunkStatus.QUEUED, ChunkStatus.RUNNING)
