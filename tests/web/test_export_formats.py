"""Every export format of ``captions export`` has a download on the job page and in the API."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.web.conftest import WebStore
from vicap_jobs.services.captions_export import FORMATS
from vicap_jobs.web.api import MEDIA_TYPES, SUFFIXES


def test_every_export_format_downloads_from_page_and_api(client: TestClient, web_store: WebStore) -> None:
    """The job page links each format, and each link and API call answers a named attachment."""
    assert set(MEDIA_TYPES) == set(SUFFIXES) == set(FORMATS)
    html = client.get(f"/jobs/{web_store.caption_job}").text
    for fmt in FORMATS:
        assert f'href="/jobs/{web_store.caption_job}/export/{fmt}"' in html
        for url in (f"/jobs/{web_store.caption_job}/export/{fmt}", f"/api/jobs/{web_store.caption_job}/captions?format={fmt}"):
            response = client.get(url)
            assert response.status_code == 200, (url, response.text[:200])
            assert f"job-{web_store.caption_job}-captions.{SUFFIXES[fmt]}" in response.headers["content-disposition"]
