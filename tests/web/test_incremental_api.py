"""``POST /api/jobs/caption`` with ``skip_known`` reuses earlier captions of the same content."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from tests.web.conftest import WebStore, run_caption_job
from tests.worker.conftest import make_image_folder


def test_a_second_submission_with_skip_known_reuses_every_caption(web_store: WebStore, tmp_path: Path) -> None:
    """The first job captions four photos; the same folder again with skip_known reuses all four."""
    folder = tmp_path / "album"
    make_image_folder(folder, 4, size=32, seed=11)
    body = {"folder": str(folder), "model": "tiny-a", "engine": "torch"}
    with TestClient(web_store.app(web_roots=str(tmp_path))) as client:
        first = client.post("/api/jobs/caption", json=body)
        assert first.status_code == 201 and first.json()["reused"] == 0
        run_caption_job(web_store.db, first.json()["job_id"])
        again = client.post("/api/jobs/caption", json={**body, "skip_known": True})
        assert again.status_code == 201, again.text
        assert again.json()["reused"] == 4 and again.json()["chunks"] == 0
        job = client.get(f"/api/jobs/{again.json()['job_id']}").json()
        assert job["status"] == "succeeded" and job["done"] == 4
