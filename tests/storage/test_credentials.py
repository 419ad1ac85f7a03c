"""Object storage credentials stay where the storage library reads them: never in the store, `config` or a log.

The SeaweedFS fixture sets AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL the way a
user does; this test then imports a data set from the bucket, exports captions to it and prints
`vicap-jobs config` with every log record at DEBUG captured (botocore's request signing included),
and searches every row of every table, the SQLite file's bytes, the command output and the log
for the secret.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, inspect, text

from tests import store_helpers as jobs
from tests.seaweed import SECRET_KEY
from vicap_jobs.cli.main import cli
from vicap_jobs.settings import get_settings
from vicap_jobs.storage.objects import read_text, write_bytes
from vicap_jobs.storage.redact import has_inline_secret, redact


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="vicap-jobs")


def dump_store(db: Engine) -> str:
    """Every row of every table and view of the store, as text."""
    inspector = inspect(db)
    names = inspector.get_table_names() + inspector.get_view_names()
    lines = []
    with db.connect() as connection:
        for name in names:
            for row in connection.execute(text(f'SELECT * FROM "{name}"')):
                lines.append(f"{name}: {tuple(row)}")
    return "\n".join(lines)


def test_the_secret_reaches_no_row_no_config_line_and_no_log_record(
    vicap_env: Path,
    vicap_setenv: object,
    s3_bucket: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, botocore and s3fs included
    vicap_setenv("artifacts_url", f"{s3_bucket}/artifacts/")  # type: ignore[operator]
    from vicap_jobs.cli.common import open_store

    _, db = open_store()

    # a data set whose captions file and photos are in the bucket
    folder = vicap_env / "photos"
    image_ids = jobs.add_images(db, folder, 2)
    for path in sorted(folder.iterdir()):
        write_bytes(f"{s3_bucket}/photos/{path.name}", path.read_bytes())
    coco = {
        "images": [{"id": 1, "file_name": "img000.png"}, {"id": 2, "file_name": "img001.png"}],
        "annotations": [{"image_id": 1, "caption": "một"}, {"image_id": 2, "caption": "hai"}],
    }
    write_bytes(f"{s3_bucket}/ann.json", json.dumps(coco).encode())
    imported = invoke(
        "-vv", "dataset", "import", "remote", "--split", "test",
        "--annotations", f"{s3_bucket}/ann.json", "--images", f"{s3_bucket}/photos",
    )  # fmt: skip
    assert imported.exit_code == 0, imported.output

    # a caption job exported to the bucket
    job_id, _ = jobs.caption_job(db, image_ids, chunk_size=2)
    jobs.write(db, job_id, [jobs.ok(image_ids[0], "một"), jobs.ok(image_ids[1], "hai")])
    exported = invoke("-vv", "captions", "export", str(job_id), "--format", "csv", "--out", f"{s3_bucket}/c.csv")
    assert exported.exit_code == 0, exported.output
    assert "một" in read_text(f"{s3_bucket}/c.csv")
    assert any("botocore" in record.name for record in caplog.records)  # the signing requests were logged

    shown = invoke("config")
    assert shown.exit_code == 0
    for name in get_settings().public_view():
        assert name in shown.output  # config prints every public setting ...
    assert f"{s3_bucket}/artifacts" in shown.output
    assert "AWS_" not in shown.output  # ... and no storage credential at all

    everything = {
        "config": shown.output,
        "import output": imported.output,
        "export output": exported.output,
        "log": "\n".join(f"{r.name} {r.getMessage()} {r.args!r}" for r in caplog.records) + caplog.text,
        "store rows": dump_store(db),
    }
    for where, seen in everything.items():
        assert SECRET_KEY not in seen, f"the secret appears in the {where}"
    assert "s3://" in everything["store rows"]  # the rows searched do hold the object URLs
    store_files = [p for p in vicap_env.iterdir() if p.name.startswith("vicap.sqlite")]
    assert store_files and all(SECRET_KEY.encode() not in p.read_bytes() for p in store_files)


def test_a_url_with_inline_credentials_is_masked_in_config_and_messages(vicap_setenv: object) -> None:
    url = "s3://AKIAEXAMPLE:wJalr-inline-secret@bucket/artifacts"
    assert redact(url) == "s3://AKIAEXAMPLE:***@bucket/artifacts"
    assert (
        redact(f"cannot write {url}/x.json: denied")
        == "cannot write s3://AKIAEXAMPLE:***@bucket/artifacts/x.json: denied"
    )
    assert redact("s3://bucket/photos@2x/a.png") == "s3://bucket/photos@2x/a.png"  # an @ in a key is no password
    assert has_inline_secret(url) and not has_inline_secret("s3://bucket/a:b@c")
    vicap_setenv("artifacts_url", url)  # type: ignore[operator]
    shown = invoke("config")
    assert shown.exit_code == 0
    assert "wJalr-inline-secret" not in shown.output and "s3://AKIAEXAMPLE:***@bucket/artifacts" in shown.output


def test_an_export_to_a_url_with_inline_credentials_never_echoes_them(vicap_env: Path, tmp_path: Path) -> None:
    from vicap_jobs.cli.common import open_store

    _, db = open_store()
    image_ids = jobs.add_images(db, tmp_path / "p", 1)
    job_id, _ = jobs.caption_job(db, image_ids, chunk_size=1)
    jobs.write(db, job_id, [jobs.ok(image_ids[0])])
    result = invoke("captions", "export", str(job_id), "--out", "memory://KEY:leaky-secret@bucket/out.json")
    assert "leaky-secret" not in result.output, result.output
