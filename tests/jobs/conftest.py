"""Fixtures of the job-system unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vicap_jobs.jobs import kinds


@pytest.fixture
def restore_kinds() -> Iterator[None]:
    """Kinds a test registers are gone afterwards (the job-kind table is process-wide)."""
    saved = dict(kinds._KINDS)
    yield
    kinds._KINDS.clear()
    kinds._KINDS.update(saved)
