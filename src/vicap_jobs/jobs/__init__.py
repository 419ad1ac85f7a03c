"""The job system's store side: job kinds, every state transition of jobs and chunks, recovery rules.

Nothing here knows about Celery, torch or the CLI. Modules:

- ``kinds``: the job-kind table (one entry per kind: parameters, run function, task name, routing);
- ``params``: the validated parameters of the built-in kinds;
- ``queues``: broker queue names (``vicap``, ``gpu.N``);
- ``lifecycle``: job transitions (create, start, heartbeat, progress, succeed, fail, cancel, retry);
- ``chunks``: chunk transitions (partition, claim, heartbeat, close, give up, finish a drained job);
- ``writer``: caption rows and the job's counters, in one transaction;
- ``recovery``: which chunks and jobs are stale, lost or drained, as plans the worker side publishes;
- ``queries``: summaries for ``jobs list`` / ``jobs show`` and the web view.

Every transition takes a SQLAlchemy ``session`` (keyword-only) and never commits: the caller's
``session_scope`` decides what is one transaction.
"""
