"""A plugin that plants a bug: ``jobs list`` raises ZeroDivisionError (a non-domain error), for the CLI error tests."""

from __future__ import annotations

from typing import Any

from vicap_jobs.cli import jobs_cmd


def _broken_list_jobs(**_: Any) -> Any:
    return 1 / 0


jobs_cmd.list_jobs = _broken_list_jobs  # type: ignore[assignment]
