"""The JSON API under ``/api``: every endpoint over the web store, with the store checked behind it.

Jobs that a test changes (cancel, retry) are made here, so the module's finished caption job
(``web_store.caption_job``: five good images, a truncated JPEG, a markup file name) stays as
the fixture made it for the read-only tests.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from sqlalchemy import func, select

from tests.web.conftest import XSS_NAME, WebStore, hostile_photos, run_caption_job
from tests.worker.conftest import make_image_folder
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Image, Job, JobChunk
from vicap_jobs.services.captioning import create_caption_job
from vicap_jobs.services.workers import record_worker_heartbeat

TRUNCATED_REASON = "truncated or corrupt image data"


def png_bytes(size: tuple[int, int] = (40, 30), colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def one_line_error(response_json: object) -> str:
    """The ``error`` of an API error body, checked to be one line."""
    assert isinstance(response_json, dict) and set(response_json) == {"error"}, response_json
    message = response_json["error"]
    assert isinstance(message, str) and message and "\n" not in message
    return message


def job_row(store: WebStore, job_id: int) -> Job:
    with session_scope(store.db) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def chunks_of(store: WebStore, job_id: int) -> list[JobChunk]:
    with session_scope(store.db) as session:
        return list(session.scalars(select(JobChunk).where(JobChunk.job_id == job_id).order_by(JobChunk.seq)))


def finished_caption_job(store: WebStore, folder: Path) -> int:
    """A caption job of tiny-a over ``folder`` (made with hostile_photos), run to its end here."""
    plan = create_caption_job(
        db=store.db, folder=folder, model="tiny-a", engine_name="torch", recursive=False, batch_size=4, chunk_size=4
    )
    run_caption_job(store.db, plan.job_id)
    return plan.job_id


# --------------------------------------------------------------------------- jobs


def test_job_list_has_the_caption_job_with_its_progress(client: TestClient, web_store: WebStore) -> None:
    """GET /api/jobs lists the finished caption job with status, counts and progress; ?status filters."""
    listed = client.get("/api/jobs", params={"limit": 100})
    assert listed.status_code == 200
    by_id = {job["id"]: job for job in listed.json()}
    job = by_id[web_store.caption_job]
    assert (job["kind"], job["status"], job["total"], job["done"], job["failed"]) == ("caption", "succeeded", 7, 7, 1)
    assert job["progress"] == 1.0 and job["ended"] is True
    assert {web_store.evaluate_jobs["tiny-a"], web_store.evaluate_jobs["tiny-b"]} <= set(by_id)

    cancelled = client.get("/api/jobs", params={"status": "cancelled", "limit": 100}).json()
    assert all(j["status"] == "cancelled" for j in cancelled)
    assert web_store.caption_job not in {j["id"] for j in cancelled}


def test_one_job_has_chunks_and_errors_grouped_by_reason(client: TestClient, web_store: WebStore) -> None:
    """GET /api/jobs/{id}: chunk states and the truncated JPEG's reason under errors_by_reason."""
    response = client.get(f"/api/jobs/{web_store.caption_job}")
    assert response.status_code == 200
    job = response.json()
    assert (job["id"], job["status"], job["done"], job["total"], job["progress"]) == (
        web_store.caption_job,
        "succeeded",
        7,
        7,
        1.0,
    )
    assert job["chunks"] == {"done": 2}
    assert job["errors_by_reason"] == [{"reason": TRUNCATED_REASON, "images": 1}]
    assert job["params"]["model"] == "tiny-a" and job["params"]["folder"] == str(web_store.photos)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/jobs/987654"),
        ("POST", "/api/jobs/987654/cancel"),
        ("POST", "/api/jobs/987654/retry"),
        ("GET", "/api/jobs/987654/captions"),
    ],
)
def test_unknown_job_ids_are_404_with_a_json_error(client: TestClient, method: str, path: str) -> None:
    """Every job endpoint answers an unknown id with 404 and {"error": "<one line naming the id>"}."""
    response = client.request(method, path)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert "987654" in one_line_error(response.json())


def test_submit_caption_job_queues_the_resolved_folder(web_store: WebStore, tmp_path: Path) -> None:
    """POST /api/jobs/caption: 201, the image count, and a queued job over the resolved folder with chunks published."""
    root = tmp_path / "allowed"
    make_image_folder(root / "album", 3, size=20)
    (root / "other").mkdir()
    with TestClient(web_store.app(web_roots=str(root))) as client:
        response = client.post(
            "/api/jobs/caption",
            json={"folder": f"{root}/other/../album", "model": "tiny-a", "engine": "torch", "batch_size": 2},
        )
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["images"], body["chunks"], body["skipped_outside_roots"], body["skipped_dirs"]) == (3, 1, 0, 0)
    job = job_row(web_store, body["job_id"])
    assert (job.kind, job.status, job.total, job.done) == ("caption", "queued", 3, 0)
    assert job.params["folder"] == str((root / "album").resolve())
    assert (job.params["model"], job.params["engine"], job.params["batch_size"]) == ("tiny-a", "torch", 2)
    (chunk,) = chunks_of(web_store, body["job_id"])
    assert chunk.status == "queued" and chunk.n_images == 3
    assert chunk.broker_task_id and chunk.enqueued_at is not None  # published on the embedded broker, no worker


def test_submit_with_a_bad_body_is_a_readable_422(web_store: WebStore, tmp_path: Path) -> None:
    """A body without a folder or with batch_size 0 is refused by validation, nothing created."""
    with TestClient(web_store.app(web_roots=str(tmp_path))) as client:
        with session_scope(web_store.db) as session:
            before = session.scalar(select(func.count()).select_from(Job))
        assert client.post("/api/jobs/caption", json={"model": "tiny-a"}).status_code == 422
        too_small = client.post("/api/jobs/caption", json={"folder": str(tmp_path), "batch_size": 0})
        assert too_small.status_code == 422 and "batch_size" in too_small.text
        with session_scope(web_store.db) as session:
            assert session.scalar(select(func.count()).select_from(Job)) == before


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/jobs?status=bogus", None),
        ("GET", "/api/jobs/abc", None),
        ("POST", "/api/jobs/caption", {"model": "tiny-a"}),
        ("GET", "/api/no-such-endpoint", None),
    ],
)
def test_validation_errors_use_the_documented_error_shape(
    client: TestClient, method: str, path: str, body: dict[str, str] | None
) -> None:
    """Bad parameters and unknown API paths answer {"error": "<one line>"} like every other API error."""
    response = client.request(method, path, json=body)
    assert response.status_code in (404, 422)
    one_line_error(response.json())


def test_cancel_cancels_the_job_in_the_store(client: TestClient, web_store: WebStore, tmp_path: Path) -> None:
    """POST /api/jobs/{id}/cancel on a queued job: cancelled in the store, chunks too; cancelling again is harmless."""
    make_image_folder(tmp_path / "photos", 4, size=20)
    plan = create_caption_job(
        db=web_store.db,
        folder=tmp_path / "photos",
        model="tiny-a",
        engine_name="torch",
        recursive=False,
        batch_size=2,
        chunk_size=2,
    )
    response = client.post(f"/api/jobs/{plan.job_id}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert job_row(web_store, plan.job_id).status == "cancelled"
    assert [c.status for c in chunks_of(web_store, plan.job_id)] == ["cancelled", "cancelled"]
    assert client.get(f"/api/jobs/{plan.job_id}").json()["status"] == "cancelled"


def test_retry_queues_a_new_chunk_for_the_failed_image(client: TestClient, web_store: WebStore, tmp_path: Path) -> None:
    """POST /api/jobs/{id}/retry on a finished job with an error row: the job is queued with one new chunk for it."""
    job_id = finished_caption_job(web_store, hostile_photos(tmp_path / "photos"))
    before = chunks_of(web_store, job_id)
    assert job_row(web_store, job_id).failed == 1

    response = client.post(f"/api/jobs/{job_id}/retry")

    assert response.status_code == 200, response.text
    assert response.json() == {"job_id": job_id, "status": "queued", "chunks": 1}
    job = job_row(web_store, job_id)
    assert (job.status, job.done, job.failed, job.total) == ("queued", 6, 0, 7)
    after = chunks_of(web_store, job_id)
    assert len(after) == len(before) + 1
    new = after[-1]
    assert new.status == "queued" and new.n_images == 1 and new.broker_task_id
    with session_scope(web_store.db) as session:
        assert session.scalar(select(Image.file_name).where(Image.id == new.image_ids[0])) == "truncated.jpg"


def test_retry_of_a_job_without_failures_is_a_readable_400(client: TestClient, web_store: WebStore) -> None:
    """Retrying a succeeded evaluate job with no failed image is refused with one line, the job untouched."""
    job_id = web_store.evaluate_jobs["tiny-a"]
    response = client.post(f"/api/jobs/{job_id}/retry")
    assert response.status_code == 400
    assert "no failed or missing images" in one_line_error(response.json())
    assert job_row(web_store, job_id).status == "succeeded"


# --------------------------------------------------------------------------- captions export


def test_coco_json_export_lists_only_ok_captions_in_vietnamese(client: TestClient, web_store: WebStore) -> None:
    """format=coco-json: a JSON list of the six ok captions (not the truncated image), Vietnamese text intact."""
    response = client.get(f"/api/jobs/{web_store.caption_job}/captions", params={"format": "coco-json"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert f"job-{web_store.caption_job}-captions.json" in response.headers["content-disposition"]
    results = json.loads(response.content.decode("utf-8"))
    assert len(results) == 6
    assert all(set(r) == {"image_id", "caption"} and isinstance(r["image_id"], int) for r in results)
    with session_scope(web_store.db) as session:
        truncated_id = session.scalar(select(Image.id).where(Image.path == str(web_store.photos / "truncated.jpg")))
    assert truncated_id not in {r["image_id"] for r in results}
    vietnamese = "".join(r["caption"] for r in results)
    assert any(ch in vietnamese for ch in "ảạđơưắằẻẽ"), vietnamese  # accents survived (ensure_ascii=False, utf-8)
    assert "\\u" not in response.text


def test_csv_export_has_the_header_and_every_image(client: TestClient, web_store: WebStore) -> None:
    """format=csv: the documented header, one row per image, the error row with its reason."""
    response = client.get(f"/api/jobs/{web_store.caption_job}/captions", params={"format": "csv"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.text.splitlines()[0].startswith("image_id,coco_id,file_name,")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 7
    by_name = {row["file_name"]: row for row in rows}
    assert by_name["truncated.jpg"]["status"] == "error"
    assert by_name["truncated.jpg"]["error"].startswith(TRUNCATED_REASON)
    assert by_name[XSS_NAME]["status"] == "ok"  # the markup name survives CSV quoting as data


def test_jsonl_export_is_one_object_per_image(client: TestClient, web_store: WebStore) -> None:
    """format=jsonl (the default): seven lines, each a JSON object with the image's fields."""
    response = client.get(f"/api/jobs/{web_store.caption_job}/captions")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = response.text.splitlines()
    assert len(lines) == 7
    records = [json.loads(line) for line in lines]
    assert all(
        isinstance(r, dict) and {"image_id", "file_name", "status", "caption", "error"} <= set(r) for r in records
    )
    assert sorted(r["status"] for r in records) == ["error"] + ["ok"] * 6


def test_an_unknown_export_format_is_a_one_line_400(client: TestClient, web_store: WebStore) -> None:
    """format=xml: 400 with one line listing the formats."""
    response = client.get(f"/api/jobs/{web_store.caption_job}/captions", params={"format": "xml"})
    assert response.status_code == 400
    message = one_line_error(response.json())
    assert "xml" in message and "coco-json" in message and "jsonl" in message


def test_captions_of_a_job_without_captions_are_a_readable_400(
    client: TestClient, web_store: WebStore, tmp_path: Path
) -> None:
    """A queued caption job has no rows yet: 400 saying so, not an empty file or a 500."""
    make_image_folder(tmp_path / "empty-job", 1, size=16)
    plan = create_caption_job(
        db=web_store.db,
        folder=tmp_path / "empty-job",
        model="tiny-b",
        engine_name="torch",
        recursive=False,
        batch_size=1,
        chunk_size=1,
    )
    response = client.get(f"/api/jobs/{plan.job_id}/captions")
    assert response.status_code == 400
    assert "no caption rows yet" in one_line_error(response.json())


# --------------------------------------------------------------------------- one photo now


def test_caption_upload_returns_a_caption(client: TestClient) -> None:
    """POST /api/caption with a PNG: a Vietnamese caption, the model and engine used, the image's size."""
    response = client.post(
        "/api/caption",
        files={"file": ("photo.png", png_bytes((40, 30)), "image/png")},
        data={"model": "tiny-b", "engine": "torch"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["engine"], body["width"], body["height"]) == ("tiny-b", "torch", 40, 30)
    assert isinstance(body["caption"], str) and body["caption"].strip()
    assert body["milliseconds"] >= 0


def test_caption_upload_defaults_to_the_newest_model(client: TestClient) -> None:
    """Without model and engine the newest model (tiny-b) and its default engine caption the photo."""
    response = client.post("/api/caption", files={"file": ("photo.png", png_bytes(), "image/png")})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "tiny-b"


def test_caption_upload_with_an_unknown_model_is_a_one_line_404(client: TestClient) -> None:
    """An unknown model name: 404 with one line naming it."""
    response = client.post(
        "/api/caption", files={"file": ("photo.png", png_bytes(), "image/png")}, data={"model": "no-such-model"}
    )
    assert response.status_code == 404
    assert "no-such-model" in one_line_error(response.json())


def test_caption_upload_with_an_unknown_engine_is_a_one_line_4xx(client: TestClient) -> None:
    """An engine the family lacks: a 4xx with one line, not a 500."""
    response = client.post(
        "/api/caption",
        files={"file": ("photo.png", png_bytes(), "image/png")},
        data={"model": "tiny-a", "engine": "warp-drive"},
    )
    assert 400 <= response.status_code < 500
    assert "warp-drive" in one_line_error(response.json())


# --------------------------------------------------------------------------- models, workers, scores, schema


def test_models_lists_both_tiny_models(client: TestClient) -> None:
    """GET /api/models: tiny-a and tiny-b with family, backbone and no export yet."""
    models = {m["name"]: m for m in client.get("/api/models").json()}
    assert set(models) == {"tiny-a", "tiny-b"}
    assert models["tiny-a"]["family"] == "cnn-lstm" and models["tiny-a"]["backbone"] == "tiny"
    assert models["tiny-a"]["exported"] is False
    assert isinstance(models["tiny-a"]["id"], int) and models["tiny-a"]["created_at"]


def test_workers_shows_a_recorded_heartbeat(client: TestClient, web_store: WebStore) -> None:
    """A worker heartbeat recorded in the store appears in GET /api/workers, alive, with its queues and device."""
    record_worker_heartbeat(db=web_store.db, name="gpu-box-1", queues=["vicap", "gpu.0"], device="cuda:0", pid=4242)
    workers = {w["name"]: w for w in client.get("/api/workers").json()}
    worker = workers["gpu-box-1"]
    assert (worker["queues"], worker["device"], worker["pid"], worker["alive"]) == (
        ["vicap", "gpu.0"],
        "cuda:0",
        4242,
        True,
    )
    assert worker["last_seen_at"] and worker["started_at"]


def test_scores_have_the_baseline_beside_each_model(client: TestClient) -> None:
    """GET /api/scores?model=tiny-a: its latest coco-mini/test score with the blind baseline's BLEU-4 and ROUGE-L."""
    (row,) = client.get("/api/scores", params={"model": "tiny-a"}).json()
    assert (row["model"], row["dataset"], row["split"], row["n_images"]) == ("tiny-a", "coco-mini", "test", 6)
    for key in ("bleu_1", "bleu_4", "rouge_l", "baseline_bleu_4", "baseline_rouge_l"):
        assert isinstance(row[key], float) and 0.0 <= row[key] <= 1.0, key
    for key in ("cider_d", "baseline_cider_d"):  # ×10 scale, not bounded by 1
        assert isinstance(row[key], float) and 0.0 <= row[key] <= 10.0, key
    every = client.get("/api/scores").json()
    assert {r["model"] for r in every} == {"tiny-a", "tiny-b"}
    assert client.get("/api/scores", params={"dataset": "nope"}).json() == []


def test_openapi_schema_is_served_and_docs_are_off(client: TestClient) -> None:
    """/api/openapi.json lists the API paths (no page routes); /docs and /redoc do not exist."""
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert {"/api/jobs", "/api/jobs/{job_id}", "/api/jobs/caption", "/api/caption", "/api/scores"} <= set(paths)
    assert all(path.startswith("/api/") for path in paths)
    assert client.get("/docs").status_code == 404
    assert client.get("/redoc").status_code == 404
