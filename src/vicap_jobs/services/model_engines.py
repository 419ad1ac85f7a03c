"""Loaded inference engines of one process, per (model, engine, export), loaded on first use and kept.

A worker process loads a model once after the fork and reuses it for every chunk; a re-export
(a newer ``models.exported_at``) or a newly published version (``models.artifacts_url``) loads the
new files. A published model's files come from this host's verified cache (``services.artifacts``). The chunk runner sees it through its
``EngineProvider`` protocol, so it never reads model rows itself.
"""

from __future__ import annotations

from sqlalchemy import Engine

from vicap_jobs.engines import load_engine
from vicap_jobs.engines.base import CaptionEngine
from vicap_jobs.services.models import calibration_sample, model_artifacts, model_by_id, resolve_engine_name


class EngineCache:
    """Engines per (model id, engine name, export time) for one process, on ``device``."""

    def __init__(self, *, db: Engine, device: str = "cpu", threads: int | None = None) -> None:
        self.db = db
        self.device = device
        self.threads = threads
        self._engines: dict[tuple[int, str, str], CaptionEngine] = {}
        self._defaults: dict[tuple[int, str], str] = {}  # (model id, export time) → its measured default here

    def get(self, model_id: int, engine_name: str | None) -> CaptionEngine:
        """The engine ``engine_name`` of model ``model_id``, loaded now if this process has not yet.

        None is the model's default engine on this process's device, measured here once
        (``services.models.resolve_engine_name``) when its family prefers an engine where faster.
        """
        model = model_by_id(db=self.db, model_id=model_id)
        # A re-export or a newly published version (another artifacts URL) means new files to load.
        version = f"{model.exported_at.isoformat() if model.exported_at else ''} {model.artifacts_url or ''}"
        if engine_name is None:
            default_key = (model.id, version)
            if default_key not in self._defaults:
                sample = calibration_sample(db=self.db, model=model)  # its own photos, when they are on this host
                self._defaults[default_key] = resolve_engine_name(model, None, device=self.device, images=sample)
            engine_name = self._defaults[default_key]
        key = (model.id, engine_name, version)
        if key not in self._engines:
            self._engines[key] = load_engine(
                engine_name, model_artifacts(model), device=self.device, threads=self.threads
            )
        return self._engines[key]
