"""Models in object storage (services/artifacts.py) against a real SeaweedFS server: publish, download once, verify.

Each test has a "training host" (the first VICAP_HOME, which wrote and published a tiny CNN+LSTM
checkpoint with its ONNX export) and, where it matters, a second host: another, empty VICAP_HOME,
with the first host's folder renamed away so nothing can be read from it by accident.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.conftest import use_s3_env
from tests.export.tiny_models import fixture_images, save_tiny
from tests.seaweed import SeaweedS3
from vicap_jobs.engines import load_engine
from vicap_jobs.errors import ArtifactDigestError
from vicap_jobs.export import EXPORTERS
from vicap_jobs.models.manifest import ModelArtifacts, default_export_dir
from vicap_jobs.models.registry import resolve
from vicap_jobs.services import artifacts
from vicap_jobs.services.artifacts import (
    MANIFEST_NAME,
    cache_root,
    fetch_artifacts,
    folder_digests,
    publish_artifacts,
    read_downloads,
    version_of,
)
from vicap_jobs.services.model_engines import EngineCache
from vicap_jobs.services.models import model_artifacts, model_by_id, promote_model, record_export, register_model
from vicap_jobs.storage import objects
from vicap_jobs.storage.locations import join

NAME = "tiny"
ENGINES = ("torch", "onnx")


@pytest.fixture(scope="module")
def checkpoint_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CNN+LSTM checkpoint with its ONNX export in ``onnx/`` (built once: the export takes seconds)."""
    checkpoint = save_tiny(tmp_path_factory.mktemp("template") / NAME, "cnn-lstm", seed=3)
    resolve(EXPORTERS["onnx"])(checkpoint, default_export_dir(checkpoint, "onnx"))
    return checkpoint


@dataclass
class Host:
    """The training host: its home, the model's folder in it, the model's id."""

    home: Path
    folder: Path
    model_id: int


@pytest.fixture()
def training_host(
    vicap_env: Path, vicap_setenv: Callable[[str, str | None], None], sqlite_db: Engine, checkpoint_template: Path
) -> Host:
    """The tiny model registered (with its export) from a folder under the first VICAP_HOME; not published."""
    folder = vicap_env / "models" / NAME
    shutil.copytree(checkpoint_template, folder)
    model_id = register_model(
        db=sqlite_db,
        name=NAME,
        family="cnn-lstm",
        backbone=None,
        artifact_dir=str(folder),
        hyperparameters={},
        vocabulary=str(folder / "vocab.json"),
        tokenization="syllable",
        image_size=None,
        dataset_id=None,
        trained_by_job_id=None,
    )
    record_export(db=sqlite_db, model_id=model_id, onnx_path=str(folder / "onnx"), quantized=False)
    return Host(vicap_env, folder, model_id)


@pytest.fixture(scope="module")
def module_bucket(seaweed: SeaweedS3) -> str:
    """One bucket for this module's tests (each under its own prefix): the session server has room for few buckets."""
    return f"s3://{seaweed.new_bucket()}"


@pytest.fixture()
def artifacts_url(
    module_bucket: str,
    seaweed: SeaweedS3,
    monkeypatch: pytest.MonkeyPatch,
    vicap_setenv: Callable[[str, str | None], None],
    request: pytest.FixtureRequest,
) -> str:
    """``VICAP_ARTIFACTS_URL`` set to a prefix of this test's own, with the AWS variables of the session server."""
    use_s3_env(monkeypatch, seaweed)
    url = f"{module_bucket}/{request.node.name[:60]}/artifacts"
    vicap_setenv("artifacts_url", url)
    return url


@pytest.fixture()
def published(training_host: Host, artifacts_url: str, sqlite_db: Engine) -> Host:
    assert publish_artifacts(db=sqlite_db, model_id=training_host.model_id) is not None
    return training_host


@pytest.fixture()
def second_host(published: Host, tmp_path: Path, vicap_setenv: Callable[[str, str | None], None]) -> Iterator[Path]:
    """Switch this process to another, empty VICAP_HOME; the training host's folder is renamed away meanwhile."""
    home = tmp_path / "host-b"
    home.mkdir()
    vicap_setenv("home", str(home))
    hidden = published.folder.with_name("elsewhere")
    published.folder.rename(hidden)
    yield home
    hidden.rename(published.folder)


def captions(artifacts_at: ModelArtifacts, engine: str) -> list[str]:
    return load_engine(engine, artifacts_at).caption(fixture_images(4, seed=11))


def remote_keys(url: str) -> dict[str, int]:
    """{relative key: size} of every object under ``url``."""
    fs, root = objects.filesystem(url)
    found = fs.find(root, detail=True)
    return {key[len(root) :].lstrip("/"): int(info["size"]) for key, info in found.items()}


# --------------------------------------------------------------------------- publishing


def test_publish_uploads_every_file_then_the_manifest_and_records_the_row(
    training_host: Host, artifacts_url: str, sqlite_db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[str] = []
    for name, target in (("upload_file", 1), ("write_bytes", 0), ("copy_object", 1)):  # which argument is the target
        real = getattr(objects, name)

        def spy(*args: object, _real: Callable[..., None] = real, _target: int = target) -> None:
            writes.append(str(args[_target]).rsplit("/", 1)[-1])
            _real(*args)

        monkeypatch.setattr(objects, name, spy)

    url = publish_artifacts(db=sqlite_db, model_id=training_host.model_id)

    digests = folder_digests(training_host.folder)
    assert set(digests) == {
        "config.json",
        "model.safetensors",
        "vocab.json",
        "onnx/encoder_model.onnx",
        "onnx/decoder_model.onnx",
        "onnx/onnx_config.json",
        "onnx/vocab.json",
    }
    version = version_of(digests)
    assert url == f"{artifacts_url}/{NAME}/{version}"
    assert writes[-1] == MANIFEST_NAME and writes.count(MANIFEST_NAME) == 1  # the manifest goes last
    sizes = {relative: (training_host.folder / relative).stat().st_size for relative in digests}
    assert remote_keys(url) == {**sizes, MANIFEST_NAME: remote_keys(url)[MANIFEST_NAME]}
    manifest = json.loads(objects.read_text(join(url, MANIFEST_NAME)))
    assert manifest["model"] == NAME and manifest["family"] == "cnn-lstm" and manifest["version"] == version
    assert manifest["files"] == {r: {"sha256": digests[r], "size": sizes[r]} for r in digests}
    assert manifest["written_at"]
    ref = model_by_id(db=sqlite_db, model_id=training_host.model_id)
    assert (ref.artifacts_url, ref.artifact_digests) == (url, digests)
    # this host's cache is seeded: it never downloads what it wrote
    assert model_artifacts(ref).checkpoint_dir == cache_root() / version
    assert model_artifacts(ref).export_dir("onnx") == cache_root() / version / "onnx"
    assert read_downloads() == []


def test_publishing_an_unchanged_model_again_uploads_nothing(
    published: Host, sqlite_db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = model_by_id(db=sqlite_db, model_id=published.model_id).artifacts_url
    monkeypatch.setattr(objects, "upload_file", lambda *_: pytest.fail("uploaded again"))
    assert publish_artifacts(db=sqlite_db, model_id=published.model_id) == before


def test_a_new_version_copies_unchanged_files_within_the_store(
    published: Host, sqlite_db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-export or a sweep's run record: only the new file is uploaded; the rest is copied server-side."""
    uploaded: list[str] = []
    real = objects.upload_file
    monkeypatch.setattr(objects, "upload_file", lambda source, url: (uploaded.append(source.name), real(source, url)))
    (published.folder / "sweep_run.json").write_text('{"train_seconds": 1.5}', encoding="utf-8")

    url = publish_artifacts(db=sqlite_db, model_id=published.model_id)

    assert uploaded == ["sweep_run.json"]
    assert url is not None and "sweep_run.json" in remote_keys(url)
    assert (
        json.loads(objects.read_text(join(url, MANIFEST_NAME)))["files"].keys()
        == folder_digests(published.folder).keys()
    )


def test_storage_down_mid_publish_fails_and_leaves_the_row_local_only(
    training_host: Host,
    sqlite_db: Engine,
    own_s3: SeaweedS3,
    monkeypatch: pytest.MonkeyPatch,
    vicap_setenv: Callable[[str, str | None], None],
) -> None:
    server = own_s3
    url = f"s3://{server.new_bucket()}/artifacts"
    vicap_setenv("artifacts_url", url)
    real = objects.upload_file
    uploads: list[str] = []

    def upload_then_fail(source: Path, target: str) -> None:
        real(source, target)
        uploads.append(target)
        if len(uploads) == 2:
            server.stop()  # the storage goes away half-way through the version

    monkeypatch.setattr(objects, "upload_file", upload_then_fail)
    with pytest.raises(objects.StorageUnavailable, match="object storage unreachable"):
        publish_artifacts(db=sqlite_db, model_id=training_host.model_id)

    ref = model_by_id(db=sqlite_db, model_id=training_host.model_id)
    assert (ref.artifacts_url, ref.artifact_digests) == (None, None)
    server.start()
    version_url = join(url, NAME, version_of(folder_digests(training_host.folder)))
    assert MANIFEST_NAME not in remote_keys(version_url)  # a half-uploaded version has no manifest


def test_without_an_artifacts_url_nothing_changes(training_host: Host, sqlite_db: Engine) -> None:
    assert publish_artifacts(db=sqlite_db, model_id=training_host.model_id) is None
    ref = model_by_id(db=sqlite_db, model_id=training_host.model_id)
    assert (ref.artifacts_url, ref.artifact_digests) == (None, None)
    assert model_artifacts(ref) == ModelArtifacts(training_host.folder, exports={"onnx": training_host.folder / "onnx"})
    assert not (training_host.home / "cache" / "artifacts").exists()
    assert EngineCache(db=sqlite_db).get(training_host.model_id, "torch").caption(fixture_images(1))


# --------------------------------------------------------------------------- using, on another host


def test_another_host_captions_identically_and_downloads_once(
    published: Host, second_host: Path, sqlite_db: Engine, checkpoint_template: Path
) -> None:
    template = ModelArtifacts(checkpoint_template, exports={"onnx": checkpoint_template / "onnx"})
    expected = {engine: captions(template, engine) for engine in ENGINES}
    home = second_host

    engines = EngineCache(db=sqlite_db)
    for engine in ENGINES:
        assert engines.get(published.model_id, engine).caption(fixture_images(4, seed=11)) == expected[engine]
    for engine in ENGINES:  # a second worker process of this host: verified cache, no download
        assert (
            EngineCache(db=sqlite_db).get(published.model_id, engine).caption(fixture_images(4, seed=11))
            == expected[engine]
        )

    downloads = read_downloads()
    ref = model_by_id(db=sqlite_db, model_id=published.model_id)
    assert len(downloads) == 1
    assert downloads[0].model == NAME and downloads[0].version == version_of(ref.artifact_digests or {})
    assert downloads[0].files == 7 and downloads[0].bytes == sum(
        p.stat().st_size for p in (home / "cache" / "artifacts" / downloads[0].version).rglob("*") if p.is_file()
    )
    assert [p.name for p in (home / "cache" / "artifacts").iterdir() if p.name.endswith(".part")] == []


def test_a_tampered_remote_object_is_refused_and_nothing_is_cached(
    published: Host, second_host: Path, sqlite_db: Engine
) -> None:
    ref = model_by_id(db=sqlite_db, model_id=published.model_id)
    assert ref.artifacts_url is not None
    objects.write_bytes(join(ref.artifacts_url, "model.safetensors"), b"not the weights")

    with pytest.raises(ArtifactDigestError) as refused:
        model_artifacts(ref)
    message = str(refused.value)
    assert "\n" not in message
    assert f"model {NAME!r}: model.safetensors" in message
    assert (ref.artifact_digests or {})["model.safetensors"][:12] in message
    assert "the download is discarded" in message
    cache = second_host / "cache" / "artifacts"
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == []
    assert read_downloads() == []

    with pytest.raises(ArtifactDigestError):  # through a worker's engine cache: the same one-line refusal
        EngineCache(db=sqlite_db).get(published.model_id, "torch")


def test_a_tampered_cached_file_is_not_used_and_is_downloaded_again(
    published: Host, second_host: Path, sqlite_db: Engine
) -> None:
    ref = model_by_id(db=sqlite_db, model_id=published.model_id)
    folder = model_artifacts(ref).checkpoint_dir
    weights = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(weights[:-8] + b"tampered")

    assert model_artifacts(ref).checkpoint_dir == folder
    assert (folder / "model.safetensors").read_bytes() == weights
    assert len(read_downloads()) == 2


def _fetch_in_child(name: str, url: str, digests: dict[str, str]) -> None:
    fetch_artifacts(name=name, url=url, digests=digests)


def test_worker_processes_of_one_host_download_once(published: Host, second_host: Path, sqlite_db: Engine) -> None:
    ref = model_by_id(db=sqlite_db, model_id=published.model_id)
    assert ref.artifacts_url is not None and ref.artifact_digests is not None
    context = multiprocessing.get_context("fork")
    children = [
        context.Process(target=_fetch_in_child, args=(NAME, ref.artifacts_url, ref.artifact_digests)) for _ in range(3)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    assert [child.exitcode for child in children] == [0, 0, 0]
    assert len(read_downloads()) == 1


def test_promoting_a_model_published_elsewhere_copies_the_cache_and_publishes_the_copy(
    published: Host, second_host: Path, sqlite_db: Engine
) -> None:
    source = model_by_id(db=sqlite_db, model_id=published.model_id)
    best = model_by_id(db=sqlite_db, model_id=promote_model(db=sqlite_db, source=NAME, name="best"))

    assert best.artifact_dir == str(second_host / "models" / "best")
    assert best.artifact_digests == source.artifact_digests  # the same files, so the same version
    assert best.artifacts_url == (source.artifacts_url or "").replace(f"/{NAME}/", "/best/")
    assert MANIFEST_NAME in remote_keys(best.artifacts_url or "")
    assert len(read_downloads()) == 1  # the source's download; the copy's cache is the same version


def test_version_key_is_the_digests_not_the_paths_of_the_host() -> None:
    assert version_of({"a": "1", "b": "2"}) == version_of({"b": "2", "a": "1"})
    assert version_of({"a": "1"}) != version_of({"a": "2"})
    assert len(version_of({"a": "1"})) == artifacts.VERSION_DIGITS


def test_exporting_on_a_host_without_the_folder_exports_a_copy_of_the_cache_and_publishes_it(
    published: Host, second_host: Path, sqlite_db: Engine
) -> None:
    from vicap_jobs.services.exporting import export_model

    before = model_by_id(db=sqlite_db, model_id=published.model_id)
    export_model(db=sqlite_db, model=NAME)

    after = model_by_id(db=sqlite_db, model_id=published.model_id)
    here = second_host / "models" / NAME
    assert (after.artifact_dir, after.onnx_path) == (str(here), str(here / "onnx"))
    assert after.artifact_digests == folder_digests(here) and after.exported_at is not None
    assert after.artifacts_url is not None and MANIFEST_NAME in remote_keys(after.artifacts_url)
    assert after.artifacts_url.rsplit("/", 1)[0] == (before.artifacts_url or "").rsplit("/", 1)[0]
    assert model_artifacts(after).export_dir("onnx") == cache_root() / version_of(after.artifact_digests) / "onnx"
