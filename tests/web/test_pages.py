"""The HTML pages through TestClient: what each page shows from the store, and its one-line errors."""

from __future__ import annotations

import io
import re
import unicodedata

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.web.conftest import XSS_NAME, WebStore
from vicap_jobs.services.workers import record_worker_heartbeat


def _png(size: tuple[int, int] = (40, 30), colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_dashboard_lists_jobs_workers_and_scores_beside_the_baseline(client: TestClient, web_store: WebStore) -> None:
    """Every job of the store has a row with its progress; the worker and both models' scores appear."""
    record_worker_heartbeat(db=web_store.db, name="gpu0@host-a", queues=["gpu.0", "vicap"], device="cuda:0", pid=1)
    html = client.get("/").text
    for job_id in (web_store.caption_job, *web_store.evaluate_jobs.values()):
        assert f'data-job-id="{job_id}"' in html
    row = re.search(rf'<tr class="job[^"]*" data-job-id="{web_store.caption_job}">(.*?)</tr>', html, re.S)
    assert row is not None and "7/7" in row.group(1) and "succeeded" in row.group(1)
    assert "gpu0@host-a" in html and "cuda:0" in html
    assert 'href="/models/tiny-a"' in html and 'href="/models/tiny-b"' in html
    assert "baseline BLEU-4" in html and "baseline CIDEr-D" in html
    cider = re.findall(r'<td class="num cider">(.*?)</td>', html)  # the models' CIDEr-D: 2 decimals, not ×100
    assert len(cider) == 2 and all(re.fullmatch(r"\d+\.\d\d", value) for value in cider), cider


def test_dashboard_fragment_is_the_rows_alone(client: TestClient, web_store: WebStore) -> None:
    """The polled fragment carries the job rows and nothing of the page around them."""
    fragment = client.get("/fragments/jobs").text
    assert f'data-job-id="{web_store.caption_job}"' in fragment
    assert "<html" not in fragment and "<tr" in fragment


def test_job_gallery_shows_captions_errors_by_reason_and_exports(client: TestClient, web_store: WebStore) -> None:
    """Seven tiles (six ok, the truncated one an error with its reason), export links, retry on a finished job."""
    html = client.get(f"/jobs/{web_store.caption_job}").text
    assert html.count('class="tile ok"') == 6 and html.count('class="tile error"') == 1
    assert "truncated or corrupt image data" in html
    for fmt in ("coco-json", "csv", "jsonl"):
        assert f'href="/jobs/{web_store.caption_job}/export/{fmt}"' in html
    assert f'action="/jobs/{web_store.caption_job}/retry"' in html
    assert f'action="/jobs/{web_store.caption_job}/cancel"' not in html
    captions = re.findall(r'<div class="caption" lang="vi">(.*?)</div>', html)
    assert captions and all(unicodedata.is_normalized("NFC", text) for text in captions)
    assert any(ch in "".join(captions) for ch in "đỏứảàèó")


def test_job_gallery_filters_and_pages(client: TestClient, web_store: WebStore) -> None:
    """status=error shows only the failed image; a page of the gallery holds at most its page size."""
    errors = client.get(f"/jobs/{web_store.caption_job}?status=error").text
    assert errors.count('class="tile error"') == 1 and 'class="tile ok"' not in errors
    missing = client.get(f"/jobs/{web_store.caption_job}?status=error&page=2").text
    assert 'class="tile' not in missing


def test_markup_in_a_file_name_is_shown_as_text(client: TestClient, web_store: WebStore) -> None:
    """The file named like HTML appears escaped; the raw tag never reaches the page."""
    html = client.get(f"/jobs/{web_store.caption_job}").text
    assert "<img src=x" not in html and "<script>alert" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert XSS_NAME.replace("<", "&lt;").replace(">", "&gt;") in html


def test_model_page_has_config_training_scores_chart_and_samples(client: TestClient, web_store: WebStore) -> None:
    """The chart is inline SVG with a BLEU-4 and a ROUGE-L line; samples pair captions with references."""
    html = client.get("/models/tiny-a").text
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="chart"' in html
    assert 'data-series="BLEU-4 coco-mini/test"' in html and 'data-series="ROUGE-L coco-mini/test"' in html
    assert "embed_dim" in html and "cnn-lstm" in html
    assert html.count('<ul class="references"') >= 1
    assert "/thumbnails/" in html and "size=320" in html


def test_compare_two_models_side_by_side(client: TestClient, web_store: WebStore) -> None:
    """Both evaluate jobs' captions on the test images, with references and per-image scores."""
    html = client.get("/compare?a=tiny-a&b=tiny-b").text
    rows = re.findall(r'<tr data-image-id="(\d+)">', html)
    assert len(rows) == 6
    assert html.count('class="side-a"') == 6 and html.count('class="side-b"') == 6
    assert "BLEU-4" in html and '<ul class="references">' in html
    assert f"job {web_store.evaluate_jobs['tiny-a']}" in html and f"job {web_store.evaluate_jobs['tiny-b']}" in html


def test_compare_two_jobs_by_id(client: TestClient, web_store: WebStore) -> None:
    """A job compared with itself agrees everywhere (100.0 on every row)."""
    job = web_store.evaluate_jobs["tiny-a"]
    html = client.get(f"/compare?by=jobs&a={job}&b=%23{job}").text
    agreements = re.findall(r'<td class="num">([\d.]+)</td>\s*</tr>', html)
    assert agreements and set(agreements) == {"100.0"}


def test_compare_errors_are_one_line(client: TestClient) -> None:
    """An unknown model and a non-numeric job id are readable pages with a 4xx status."""
    unknown = client.get("/compare?a=tiny-a&b=nope")
    assert unknown.status_code == 404 and "no model named &#39;nope&#39;" in unknown.text
    not_a_number = client.get("/compare?by=jobs&a=x&b=1")
    assert not_a_number.status_code == 400 and "a job is compared by its id" in not_a_number.text


def test_try_it_captions_an_upload_and_says_how(client: TestClient) -> None:
    """A PNG upload gives a Vietnamese caption, the model, the engine and the photo's size."""
    response = client.post("/try", files={"photo": ("ảnh.png", _png(), "image/png")}, data={"model": "tiny-a", "engine": "torch"})
    assert response.status_code == 200
    caption = re.search(r'<p class="caption big" lang="vi">(.*?)</p>', response.text)
    assert caption is not None and caption.group(1).strip()
    assert "tiny-a · torch · 40×30" in response.text


def test_try_it_rejects_what_is_not_a_photo_and_keeps_serving(client: TestClient) -> None:
    """A text file named .jpg is a 422 page with a readable reason; the next request is fine."""
    response = client.post("/try", files={"photo": ("photo.jpg", b"hello, not a jpeg", "image/jpeg")}, data={"model": "tiny-a"})
    assert response.status_code == 422
    message = re.search(r'<p class="error-message" role="alert">(.*?)</p>', response.text)
    assert message is not None and "Traceback" not in response.text and len(message.group(1)) < 200
    assert client.get("/").status_code == 200


def test_unknown_things_are_readable_404_pages(client: TestClient) -> None:
    """An unknown job, model or path is the error page, not a traceback or JSON."""
    for path, text in (("/jobs/99999", "no job with id 99999"), ("/models/nope", "no model named"), ("/nowhere", "no such page")):
        response = client.get(path)
        assert response.status_code == 404 and text in response.text and "<html" in response.text


def test_a_malformed_id_on_a_page_is_a_readable_page(client: TestClient) -> None:
    """``/jobs/abc`` is a 422 page naming the problem."""
    response = client.get("/jobs/abc")
    assert response.status_code == 422 and "job_id" in response.text and "<html" in response.text


def test_thumbnail_is_a_small_jpeg(client: TestClient, web_store: WebStore) -> None:
    """A stored image's thumbnail fits in 160 px; an unreadable one is the placeholder with an error status."""
    html = client.get(f"/jobs/{web_store.caption_job}").text
    ok_id = re.search(r'<li class="tile ok" data-image-id="(\d+)">', html)
    error_id = re.search(r'<li class="tile error" data-image-id="(\d+)">', html)
    assert ok_id and error_id
    response = client.get(f"/thumbnails/{ok_id.group(1)}.jpg")
    assert response.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(response.content)).size) <= 160
    broken = client.get(f"/thumbnails/{error_id.group(1)}.jpg")
    assert broken.status_code == 422 and broken.headers["content-type"].startswith("image/svg+xml")


def test_an_upload_declared_over_the_cap_is_refused_before_it_is_read(
    web_store: WebStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body whose Content-Length is past the cap gets 413 without the upload ever being read."""
    from vicap_jobs.web import api, pages

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the upload was read")

    monkeypatch.setattr(api, "read_upload", never)
    monkeypatch.setattr(pages, "read_upload", never)
    big = b"\xff" * 300_000
    with TestClient(web_store.app(web_max_upload_mb=0.1)) as client:
        api_answer = client.post("/api/caption", files={"file": ("big.jpg", big, "image/jpeg")})
        form_answer = client.post("/try", files={"photo": ("big.jpg", big, "image/jpeg")})
    assert api_answer.status_code == 413 and "limit is 0.1 MB" in api_answer.json()["error"]
    assert form_answer.status_code == 413 and "limit is 0.1 MB" in form_answer.text
