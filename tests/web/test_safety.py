"""What the web view refuses: requests without the token, cross-site changes, folders outside the roots,
paths in thumbnail URLs, markup in file names, SQL in parameters, and hostile uploads.

Each refusal is checked from outside (status, one readable line) and, where it matters, in the store
(no job created, the job not cancelled, the jobs table intact).
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from sqlalchemy import func, select

from tests.web.conftest import XSS_NAME, WebStore
from tests.worker.conftest import make_image_folder
from vicap_jobs.db.session import session_scope
from vicap_jobs.db.tables import Image, Job, JobChunk
from vicap_jobs.errors import ConfigError
from vicap_jobs.services.captioning import create_caption_job
from vicap_jobs.web.auth import COOKIE, check_bind

TOKEN = "s3cret-token-for-tests"
XSS_ESCAPED = "&lt;img src=x onerror=alert(1)&gt;&lt;script&gt;alert(2)&lt;\\script&gt;.jpg"


def error_line(response_json: object) -> str:
    """The ``error`` of an API error body, checked to be one non-empty line."""
    assert isinstance(response_json, dict) and set(response_json) == {"error"}, response_json
    message = response_json["error"]
    assert isinstance(message, str) and message.strip() and "\n" not in message
    return message


def page_error(html: str) -> str:
    """The message of the HTML error page, checked to be one line."""
    found = re.search(r'<p class="error-message">(.*?)</p>', html, flags=re.S)
    assert found, html[:500]
    assert "\n" not in found.group(1)
    return found.group(1)


def count_jobs(store: WebStore) -> int:
    with session_scope(store.db) as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def queued_job(store: WebStore, folder: Path) -> int:
    """A queued (never run) caption job of tiny-a over a fresh folder of two images."""
    make_image_folder(folder, 2, size=16)
    plan = create_caption_job(
        db=store.db, folder=folder, model="tiny-a", engine_name="torch", recursive=False, batch_size=2, chunk_size=2
    )
    return plan.job_id


def status_of(store: WebStore, job_id: int) -> str:
    with session_scope(store.db) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.status


def image_id_of(store: WebStore, path: Path) -> int:
    with session_scope(store.db) as session:
        image_id = session.scalar(select(Image.id).where(Image.path == str(path)))
    assert image_id is not None
    return int(image_id)


@pytest.fixture()
def guarded(web_store: WebStore) -> Iterator[TestClient]:
    """A client of the app with VICAP_WEB_TOKEN set, sending no token of its own."""
    with TestClient(web_store.app(web_token=TOKEN)) as client:
        yield client


# --------------------------------------------------------------------------- the token rule


def test_api_without_the_token_is_401_json(guarded: TestClient) -> None:
    """With a token configured, /api without it answers 401 and a JSON line saying how to send it."""
    response = guarded.get("/api/jobs")
    assert response.status_code == 401
    assert "Bearer" in error_line(response.json())
    assert guarded.post("/api/jobs/1/cancel").status_code == 401


def test_pages_without_the_token_redirect_to_login(guarded: TestClient, web_store: WebStore) -> None:
    """A page GET without the token goes to /login, remembering where it was going; login and static stay open."""
    response = guarded.get(f"/jobs/{web_store.caption_job}", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == f"/login?next=/jobs/{web_store.caption_job}"
    assert guarded.get("/", follow_redirects=False).headers["location"] == "/login?next=/"
    assert guarded.get("/login").status_code == 200
    assert guarded.get("/static/style.css").status_code == 200
    form = guarded.post(f"/jobs/{web_store.caption_job}/cancel", follow_redirects=False)
    assert form.status_code == 401  # a change without the token is refused, not redirected
    assert status_of(web_store, web_store.caption_job) == "succeeded"


def test_a_wrong_token_is_401_and_the_bearer_token_works(guarded: TestClient) -> None:
    """A wrong Bearer token or cookie is refused; the right Bearer token opens the API and the pages."""
    assert guarded.get("/api/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert guarded.get("/api/jobs", headers={"Authorization": f"Bearer {TOKEN}x"}).status_code == 401
    assert guarded.get("/api/jobs", headers={"Authorization": TOKEN}).status_code == 401  # no "Bearer "
    guarded.cookies.set(COOKIE, "wrong")
    assert guarded.get("/api/jobs").status_code == 401
    guarded.cookies.clear()
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert guarded.get("/api/jobs", headers=good).status_code == 200
    assert guarded.get("/", headers=good).status_code == 200


def test_login_sets_a_strict_httponly_cookie_and_then_pages_work(guarded: TestClient, web_store: WebStore) -> None:
    """POST /login with the token: 303 to ``next``, an HttpOnly SameSite=Strict cookie holding it; pages then open."""
    response = guarded.post(
        "/login", data={"token": TOKEN, "next": f"/jobs/{web_store.caption_job}"}, follow_redirects=False
    )
    assert response.status_code == 303
    assert response.headers["location"] == f"/jobs/{web_store.caption_job}"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}={TOKEN};")
    attributes = {part.strip().lower() for part in cookie.split(";")}
    assert "httponly" in attributes and "samesite=strict" in attributes
    assert guarded.get("/", follow_redirects=False).status_code == 200
    assert guarded.get("/api/jobs").status_code == 200


def test_a_wrong_token_at_login_is_401_without_a_cookie(guarded: TestClient) -> None:
    """POST /login with a wrong token: the form again with 401, no cookie, pages still closed."""
    response = guarded.post("/login", data={"token": "guess", "next": "/"}, follow_redirects=False)
    assert response.status_code == 401
    assert "set-cookie" not in response.headers
    assert "wrong token" in response.text
    assert guarded.get("/", follow_redirects=False).status_code == 303


@pytest.mark.parametrize(
    "path", ["/login%2F..%2Fapi%2Fjobs", "/login/..%2Fapi/jobs", "/static/..%2Fapi%2Fjobs", "/static%2F..%2Fapi%2Fjobs"]
)
def test_the_open_paths_open_nothing_else(guarded: TestClient, path: str) -> None:
    """A path that starts like /login or /static/ but names something else is a 404, never the API's data."""
    response = guarded.get(path, follow_redirects=False)
    assert response.status_code in (401, 404)
    assert '"kind"' not in response.text


def test_a_login_from_another_site_is_refused(client: TestClient) -> None:
    """A login form posted from another site (login CSRF) is 403 before the token is looked at."""
    response = client.post(
        "/login", data={"token": "x", "next": "/"}, headers={"Origin": "http://evil.example"}, follow_redirects=False
    )
    assert response.status_code == 403
    assert "set-cookie" not in response.headers


@pytest.mark.parametrize("target", ["//evil.com", "https://evil.com", "/\\evil.com", "evil.com", "", "\\\\evil.com"])
def test_login_redirects_only_to_local_paths(guarded: TestClient, target: str) -> None:
    """``next`` pointing off the site (``//host``, a scheme, a backslash, no leading slash) becomes "/"."""
    response = guarded.post("/login", data={"token": TOKEN, "next": target}, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    form = guarded.get("/login", params={"next": target})
    assert 'name="next" value="/"' in form.text


# --------------------------------------------------------------------------- the bind rule


def test_binding_off_loopback_without_a_token_is_refused() -> None:
    """check_bind: 0.0.0.0 or a LAN address without a token is a ConfigError naming VICAP_WEB_TOKEN."""
    for host in ("0.0.0.0", "192.168.1.20", "::"):
        with pytest.raises(ConfigError) as refused:
            check_bind(host, None)
        message = str(refused.value)
        assert host in message and "VICAP_WEB_TOKEN" in message and "\n" not in message
    with pytest.raises(ConfigError):
        check_bind("0.0.0.0", "")


def test_loopback_without_a_token_and_anywhere_with_one_are_allowed() -> None:
    """check_bind accepts 127.0.0.1, localhost and ::1 without a token, and any host with one."""
    for host in ("127.0.0.1", "localhost", "::1"):
        check_bind(host, None)
    check_bind("0.0.0.0", TOKEN)


def _run_web_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Result, list[object]]:
    """``vicap-jobs web --host 0.0.0.0`` without VICAP_WEB_TOKEN, uvicorn.run replaced by a recorder."""
    import uvicorn

    from vicap_jobs.cli.main import cli
    from vicap_jobs.settings import reset_settings

    started: list[object] = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: started.append((args, kwargs)))
    env: dict[str, str | None] = {name: None for name in os.environ if name.startswith("VICAP_")}
    env["VICAP_HOME"] = str(tmp_path / "home")
    reset_settings()
    try:  # CliRunner restores the environment afterwards; the settings cache is ours to reset
        result = CliRunner().invoke(cli, ["web", "--host", "0.0.0.0", "--port", "8765"], env=env)
    finally:
        reset_settings()
    return result, started


def test_the_web_command_refuses_0000_without_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``vicap-jobs web --host 0.0.0.0`` without VICAP_WEB_TOKEN exits non-zero naming it, and starts no server."""
    result, started = _run_web_cli(tmp_path, monkeypatch)
    assert result.exit_code != 0
    assert "VICAP_WEB_TOKEN" in result.stderr
    assert "Traceback" not in result.output
    assert started == []


def test_the_refused_web_command_says_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal is the only thing printed: one line, no claim that the view is up."""
    result, _ = _run_web_cli(tmp_path, monkeypatch)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "VICAP_WEB_TOKEN" in lines[0]


# --------------------------------------------------------------------------- cross-site changes


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Referer": "http://evil.example/page.html"},
        {"Origin": "http://testserver.evil.example"},
    ],
)
def test_cross_site_posts_are_refused_even_without_a_token(
    client: TestClient, web_store: WebStore, tmp_path: Path, headers: dict[str, str]
) -> None:
    """A POST whose Origin/Referer names another site is 403, API and form alike; the job stays queued."""
    job_id = queued_job(web_store, tmp_path / "photos")
    api = client.post(f"/api/jobs/{job_id}/cancel", headers=headers)
    assert api.status_code == 403
    assert "cross-site" in error_line(api.json())
    form = client.post(f"/jobs/{job_id}/cancel", headers=headers, follow_redirects=False)
    assert form.status_code == 403
    assert status_of(web_store, job_id) == "queued"


def test_cross_site_posts_are_refused_with_a_valid_token(
    guarded: TestClient, web_store: WebStore, tmp_path: Path
) -> None:
    """A valid token does not make a foreign Origin acceptable."""
    job_id = queued_job(web_store, tmp_path / "photos")
    response = guarded.post(
        f"/api/jobs/{job_id}/cancel",
        headers={"Origin": "http://evil.example", "Authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 403
    assert status_of(web_store, job_id) == "queued"


def test_same_origin_posts_are_allowed(client: TestClient, web_store: WebStore, tmp_path: Path) -> None:
    """A form post from this site (Origin = Host) and a plain client without Origin both get through."""
    first = queued_job(web_store, tmp_path / "a")
    form = client.post(f"/jobs/{first}/cancel", headers={"Origin": "http://testserver"}, follow_redirects=False)
    assert form.status_code == 303 and form.headers["location"] == f"/jobs/{first}"
    assert status_of(web_store, first) == "cancelled"
    second = queued_job(web_store, tmp_path / "b")
    assert client.post(f"/api/jobs/{second}/cancel").status_code == 200
    assert status_of(web_store, second) == "cancelled"


# --------------------------------------------------------------------------- folders outside the roots


@pytest.fixture()
def roots(tmp_path: Path) -> dict[str, Path]:
    """An allowed root with photos/, sub/ and a link to a folder outside; the outside folder has images."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    make_image_folder(root / "photos", 2, size=16)
    (root / "sub").mkdir()
    make_image_folder(outside, 2, size=16, seed=7)
    (root / "escape").symlink_to(outside, target_is_directory=True)
    return {"root": root, "outside": outside}


@pytest.fixture()
def rooted(web_store: WebStore, roots: dict[str, Path]) -> Iterator[TestClient]:
    with TestClient(web_store.app(web_roots=str(roots["root"]))) as client:
        yield client


TRAVERSALS = [
    ("{root}/../", "outside the folders"),
    ("{root}/..", "outside the folders"),
    ("{root}/sub/../../etc", "outside the folders"),
    ("{root}/sub/../../outside", "outside the folders"),
    ("/etc", "outside the folders"),
    ("/", "outside the folders"),
    ("~", "outside the folders"),
    ("{root}/escape", "outside the folders"),
    ("{root}/escape/", "outside the folders"),
    ("photos", "absolute path"),
    ("../root/photos", "absolute path"),
    ("", "absolute path"),
    ("{root}/photos\x00/../../../etc", "NUL character"),
    ("{root}/%2e%2e/", "no such folder"),
    ("{root}/%2e%2e%2f%2e%2e%2fetc", "no such folder"),
    ("{root}/..%2f..%2fetc", "no such folder"),
    ("{root}/photos/img_00000.png", "no such folder"),
]


@pytest.mark.parametrize(("template", "phrase"), TRAVERSALS)
def test_folders_outside_the_roots_are_refused(
    rooted: TestClient, web_store: WebStore, roots: dict[str, Path], template: str, phrase: str
) -> None:
    """Each path that leaves the roots (or is not a folder in them) is a 400 with one clear line; no job is made."""
    before = count_jobs(web_store)
    response = rooted.post("/api/jobs/caption", json={"folder": template.format(root=roots["root"]), "model": "tiny-a"})
    assert response.status_code == 400, response.text
    assert phrase in error_line(response.json())
    assert count_jobs(web_store) == before


def test_json_escaped_dots_are_decoded_then_refused(
    rooted: TestClient, web_store: WebStore, roots: dict[str, Path]
) -> None:
    """``\\u002e\\u002e`` in the JSON body is ".." after decoding, and refused like it."""
    before = count_jobs(web_store)
    body = '{"folder": "' + str(roots["root"]) + '/\\u002e\\u002e/outside", "model": "tiny-a"}'
    response = rooted.post("/api/jobs/caption", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "outside the folders" in error_line(response.json())
    assert count_jobs(web_store) == before


def test_a_url_encoded_form_of_the_folder_is_not_decoded(
    rooted: TestClient, web_store: WebStore, roots: dict[str, Path]
) -> None:
    """A folder given URL-encoded (``%2F..%2F``) is taken literally: no such folder, nothing decoded into a path."""
    before = count_jobs(web_store)
    encoded = str(roots["root"]).replace("/", "%2F") + "%2F..%2F..%2Fetc"
    response = rooted.post("/api/jobs/caption", json={"folder": encoded, "model": "tiny-a"})
    assert response.status_code == 400
    assert "absolute path" in error_line(response.json())
    assert count_jobs(web_store) == before


def _job_paths(store: WebStore, job_id: int) -> set[str]:
    with session_scope(store.db) as session:
        ids = [
            i for chunk in session.scalars(select(JobChunk).where(JobChunk.job_id == job_id)) for i in chunk.image_ids
        ]
        return set(session.scalars(select(Image.path).where(Image.id.in_(ids))))


def test_a_linked_file_to_an_image_outside_is_left_out(
    rooted: TestClient, web_store: WebStore, roots: dict[str, Path]
) -> None:
    """A link inside an allowed folder to an image outside: the job is made without it, skipped_outside_roots 1."""
    photos = roots["root"] / "photos"
    secret = sorted(roots["outside"].iterdir())[0]
    (photos / "zz_link.png").symlink_to(secret)
    response = rooted.post("/api/jobs/caption", json={"folder": str(photos), "model": "tiny-a"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["images"], body["skipped_outside_roots"]) == (2, 1)
    paths = _job_paths(web_store, body["job_id"])
    assert paths == {str(p) for p in sorted(photos.glob("img_*.png"))}
    assert not any("zz_link" in p or str(roots["outside"]) in p for p in paths)


def test_a_linked_folder_inside_a_recursive_walk_adds_nothing_from_outside(
    rooted: TestClient, web_store: WebStore, roots: dict[str, Path]
) -> None:
    """A recursive job over the root (which holds a link to the outside folder) contains only files under the root."""
    response = rooted.post(
        "/api/jobs/caption", json={"folder": str(roots["root"]), "recursive": True, "model": "tiny-a"}
    )
    assert response.status_code == 201, response.text
    paths = _job_paths(web_store, response.json()["job_id"])
    assert paths and all(Path(p).resolve().is_relative_to(roots["root"]) for p in paths)


def test_a_folder_of_links_only_is_refused(rooted: TestClient, web_store: WebStore, roots: dict[str, Path]) -> None:
    """A folder whose every image links outside: 400 saying so, no job."""
    links = roots["root"] / "links"
    links.mkdir()
    for image in roots["outside"].iterdir():
        (links / image.name).symlink_to(image)
    before = count_jobs(web_store)
    response = rooted.post("/api/jobs/caption", json={"folder": str(links), "model": "tiny-a"})
    assert response.status_code == 400
    assert "outside the allowed folders" in error_line(response.json())
    assert count_jobs(web_store) == before


def test_submission_without_roots_is_off(client: TestClient, web_store: WebStore) -> None:
    """No VICAP_WEB_ROOTS: 400 naming the setting, even for a folder that exists, and no job."""
    before = count_jobs(web_store)
    response = client.post("/api/jobs/caption", json={"folder": str(web_store.photos), "model": "tiny-a"})
    assert response.status_code == 400
    assert "VICAP_WEB_ROOTS" in error_line(response.json())
    assert count_jobs(web_store) == before


# --------------------------------------------------------------------------- thumbnails


@pytest.mark.parametrize(
    "path",
    [
        "/thumbnails/../../etc/passwd",
        "/thumbnails/..%2f..%2fetc%2fpasswd.jpg",
        "/thumbnails/%2e%2e%2f%2e%2e%2fetc%2fpasswd.jpg",
        "/thumbnails/..%5c..%5cetc%5cpasswd.jpg",
    ],
)
def test_thumbnail_urls_with_paths_reach_no_file(client: TestClient, path: str) -> None:
    """A thumbnail URL carrying a path is 404 or 422, never a file's content."""
    response = client.get(path)
    assert response.status_code in (404, 422)
    assert "root:" not in response.text


def test_thumbnail_ids_must_be_integers(client: TestClient) -> None:
    """``/thumbnails/abc.jpg`` and ``/thumbnails/1.5.jpg`` are 422 (validation), not a lookup."""
    assert client.get("/thumbnails/abc.jpg").status_code == 422
    assert client.get("/thumbnails/1.5.jpg").status_code == 422


def test_an_unknown_thumbnail_is_the_placeholder_with_404(client: TestClient) -> None:
    """An id not in the store: 404 with the placeholder SVG."""
    response = client.get("/thumbnails/987654.jpg")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("image/svg+xml")
    assert response.text.startswith("<svg")


def test_an_unreadable_image_thumbnail_is_the_placeholder_with_422(client: TestClient, web_store: WebStore) -> None:
    """The truncated JPEG's thumbnail: 422 with the placeholder, not a 500; a size not offered is 400."""
    truncated = image_id_of(web_store, web_store.photos / "truncated.jpg")
    response = client.get(f"/thumbnails/{truncated}.jpg")
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("image/svg+xml")
    good = image_id_of(web_store, web_store.photos / "img_00000.png")
    assert client.get(f"/thumbnails/{good}.jpg", params={"size": 4000}).status_code == 400


def test_a_thumbnail_is_a_small_jpeg_served_from_the_cache_the_second_time(
    client: TestClient, web_store: WebStore
) -> None:
    """A real id: a JPEG at most 160 px, written under VICAP_HOME/cache/thumbnails and read from there next time."""
    image_id = image_id_of(web_store, web_store.photos / "img_00001.png")
    with session_scope(web_store.db) as session:
        digest = session.scalar(select(Image.sha256).where(Image.id == image_id))
    cached = web_store.home / "cache" / "thumbnails" / f"{digest}-160.jpg"
    cached.unlink(missing_ok=True)

    first = client.get(f"/thumbnails/{image_id}.jpg")
    assert first.status_code == 200
    assert first.headers["content-type"] == "image/jpeg"
    with PILImage.open(io.BytesIO(first.content)) as thumbnail:
        assert thumbnail.format == "JPEG" and max(thumbnail.size) <= 160
    assert cached.read_bytes() == first.content

    marker = io.BytesIO()
    PILImage.new("RGB", (7, 5), (0, 255, 0)).save(marker, format="JPEG")
    cached.write_bytes(marker.getvalue())
    try:
        second = client.get(f"/thumbnails/{image_id}.jpg")
        assert second.status_code == 200 and second.content == marker.getvalue()
    finally:
        cached.unlink()


# --------------------------------------------------------------------------- markup in names and parameters


def test_a_markup_file_name_is_escaped_on_the_job_page(client: TestClient, web_store: WebStore) -> None:
    """The job page shows the markup file name escaped, never as markup."""
    response = client.get(f"/jobs/{web_store.caption_job}")
    assert response.status_code == 200
    assert "<img src=x" not in response.text
    assert "<script>alert(2)" not in response.text
    assert XSS_ESCAPED in response.text


def test_a_markup_file_name_is_data_in_the_jsonl_export(client: TestClient, web_store: WebStore) -> None:
    """In the jsonl export the markup name is a JSON string equal to the file name, served as ndjson, not HTML."""
    response = client.get(f"/jobs/{web_store.caption_job}/export/jsonl")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert response.headers["content-disposition"].startswith("attachment")
    names = {json.loads(line)["file_name"] for line in response.text.splitlines()}
    assert XSS_NAME in names


@pytest.mark.parametrize(
    "path",
    ["/models/<img src=x onerror=alert(1)>", "/compare?a=<img src=x onerror=alert(1)>&b=tiny-a"],
)
def test_markup_in_a_url_is_escaped_on_the_error_page(client: TestClient, path: str) -> None:
    """A name with markup in the URL comes back escaped on the 404 page."""
    response = client.get(path)
    assert response.status_code == 404
    assert "<img src=x" not in response.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in response.text


def test_sql_in_a_status_filter_is_a_validation_error(client: TestClient) -> None:
    """``?status=running' OR 1=1--`` is not a status: 422."""
    assert client.get("/api/jobs", params={"status": "running' OR 1=1--"}).status_code == 422
    assert client.get("/api/jobs/1 OR 1=1").status_code == 422


def test_sql_in_a_model_name_is_just_an_unknown_name(client: TestClient, web_store: WebStore) -> None:
    """``/models/x'; DROP TABLE jobs;--`` is a 404 with one line, and the jobs table keeps its rows."""
    before = count_jobs(web_store)
    assert before > 0
    response = client.get("/models/x'%3B DROP TABLE jobs;--")
    assert response.status_code == 404
    assert "DROP TABLE" in page_error(response.text)
    assert client.get("/api/scores", params={"model": "x' OR '1'='1"}).json() == []
    assert count_jobs(web_store) == before


def test_sql_in_a_comparison_is_a_readable_4xx(client: TestClient) -> None:
    """``compare?a=1 OR 1=1``: 404 (no such model) by models, 400 (not a job id) by jobs, one line each."""
    by_models = client.get("/compare", params={"a": "1 OR 1=1", "b": "tiny-a"})
    assert by_models.status_code == 404
    assert "1 OR 1=1" in page_error(by_models.text)
    by_jobs = client.get("/compare", params={"a": "1 OR 1=1", "b": "2", "by": "jobs"})
    assert by_jobs.status_code == 400
    assert "a number" in page_error(by_jobs.text)


# --------------------------------------------------------------------------- uploads


def noise_png(side: int) -> bytes:
    """A PNG of random pixels (does not compress): about 3 × side² bytes."""
    rng = np.random.default_rng(side)
    buffer = io.BytesIO()
    PILImage.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_upload_over_the_byte_cap_is_413(web_store: WebStore) -> None:
    """With VICAP_WEB_MAX_UPLOAD_MB=0.01 a 30 kB photo is 413 with one line naming the limit, API and form alike."""
    data = noise_png(100)
    assert len(data) > 10_000
    with TestClient(web_store.app(web_max_upload_mb="0.01")) as client:
        api = client.post("/api/caption", files={"file": ("big.png", data, "image/png")}, data={"model": "tiny-a"})
        assert api.status_code == 413
        assert "VICAP_WEB_MAX_UPLOAD_MB" in error_line(api.json())
        form = client.post("/try", files={"photo": ("big.png", data, "image/png")}, data={"model": "tiny-a"})
        assert form.status_code == 413
        assert client.get("/").status_code == 200


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_an_upload_over_the_pixel_cap_is_422_before_decoding(client: TestClient) -> None:
    """A 12 kB PNG of 10000×10000 pixels is refused from its header: 422 saying megapixels."""
    buffer = io.BytesIO()
    PILImage.new("1", (10_000, 10_000)).save(buffer, format="PNG")
    assert len(buffer.getvalue()) < 100_000
    response = client.post("/api/caption", files={"file": ("bomb.png", buffer.getvalue(), "image/png")})
    assert response.status_code == 422
    message = error_line(response.json())
    assert "megapixels" in message and "10000" in message


def truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        buffer, format="JPEG", quality=90
    )
    data = buffer.getvalue()
    return data[: len(data) // 2]


@pytest.mark.parametrize("kind", ["truncated-jpeg", "truncated-png", "text", "empty"])
def test_an_unreadable_upload_is_422_and_the_app_keeps_serving(
    client: TestClient, web_store: WebStore, kind: str
) -> None:
    """A truncated JPEG or PNG, text named .jpg, or an empty file: 422 with a readable line; GET / is still 200."""
    if kind == "truncated-jpeg":
        data = truncated_jpeg()
    elif kind == "truncated-png":
        data = (web_store.photos / "truncated.jpg").read_bytes()  # the fixture's: a PNG cut short, named .jpg
    elif kind == "text":
        data = b"this is not a photo, just text\n" * 20
    else:
        data = b""
    response = client.post("/api/caption", files={"file": ("photo.jpg", data, "image/jpeg")})
    assert response.status_code == 422
    message = error_line(response.json())
    assert "Traceback" not in message and len(message) < 300
    assert client.get("/").status_code == 200
    assert client.get("/api/jobs").status_code == 200
