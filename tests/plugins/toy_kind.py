"""A throw-away job kind, registered the way a plugin registers one (``VICAP_PLUGINS=tests.plugins.toy_kind``).

``toy-sum`` adds up its numbers on a worker and ends with the sum as its message; a negative number
is a domain error (the job fails with that one line). Nothing in ``src/`` knows about it: the
job-kind table, the worker's task registration, publishing and the run skeleton pick it up.
"""

from __future__ import annotations

from vicap_jobs.db.session import session_scope
from vicap_jobs.errors import InputError
from vicap_jobs.jobs.context import RunContext
from vicap_jobs.jobs.kinds import JobKind, register_job_kind
from vicap_jobs.jobs.lifecycle import create_job
from vicap_jobs.jobs.params import JobParams


class ToySumParams(JobParams):
    numbers: list[int]


def run_toy_sum(ctx: RunContext) -> str:
    """Add the numbers one by one, reporting progress; the worker's heartbeat runs meanwhile."""
    params = ctx.params
    assert isinstance(params, ToySumParams)
    total = 0
    for done, number in enumerate(params.numbers, start=1):
        if number < 0:
            raise InputError(f"toy-sum takes no negative numbers, got {number}")
        total += number
        ctx.report(done=done, total=len(params.numbers))
        ctx.heartbeat()
    return f"sum {total} on {ctx.worker_name.split('@')[0]}"


TOY_SUM = register_job_kind(
    JobKind(
        name="toy-sum",
        summary="add up numbers (a test plugin)",
        unit="job",
        task="tests.toy_sum",
        params=ToySumParams,
        run=run_toy_sum,
    )
)


def submit(numbers: list[int], parent_id: int | None = None) -> int:
    """Create a toy-sum job in the configured store and publish it, as a CLI command would; returns its id."""
    from vicap_jobs.db.store import open_engine
    from vicap_jobs.settings import get_settings
    from vicap_jobs.worker.publish import publish_job

    db = open_engine(get_settings())
    with session_scope(db) as session:
        job_id = create_job(session=session, kind="toy-sum", params={"numbers": numbers}, parent_id=parent_id)
    publish_job(db=db, job_id=job_id)
    return job_id
