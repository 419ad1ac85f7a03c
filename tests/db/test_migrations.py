"""Alembic migrations on SQLite and PostgreSQL: up, down, up again; no drift from the ORM; the schema check."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, insert, inspect, select, text

from vicap_jobs.db import migrate
from vicap_jobs.db import tables as t
from vicap_jobs.db.base import Base
from vicap_jobs.db.session import make_engine
from vicap_jobs.errors import StoreError

ORM_TABLES = set(Base.metadata.tables)
VIEWS = {"latest_scores"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of an empty database (no tables at all): a new SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty' / 'vicap.sqlite'}"
    return request.getfixturevalue("postgres_url")


def _schema(url: str) -> tuple[set[str], set[str], str | None]:
    """(tables, views, stamped revision) as the database reports them."""
    engine = make_engine(url)
    try:
        inspector = inspect(engine)
        return set(inspector.get_table_names()), set(inspector.get_view_names()), migrate.current_revision(engine)
    finally:
        engine.dispose()


def _assert_at_head(url: str) -> None:
    tables, views, revision = _schema(url)
    assert tables == ORM_TABLES | {"alembic_version"}
    assert views == VIEWS
    assert revision == migrate.head_revision(url)


def _assert_at_base(url: str) -> None:
    tables, views, revision = _schema(url)
    assert tables <= {"alembic_version"}, f"left behind by downgrade: {sorted(tables - {'alembic_version'})}"
    assert views == set()
    assert revision is None


def test_upgrade_downgrade_upgrade_round_trip(empty_url: str) -> None:
    assert _schema(empty_url) == (set(), set(), None)

    migrate.upgrade(empty_url)
    _assert_at_head(empty_url)

    migrate.downgrade(empty_url, "base")
    _assert_at_base(empty_url)

    migrate.upgrade(empty_url)
    _assert_at_head(empty_url)
    # the re-created schema takes rows, foreign keys included
    engine = make_engine(empty_url)
    try:
        with engine.begin() as connection:
            dataset_id = connection.execute(
                insert(t.Dataset).values(name="d", format="coco", created_at=datetime.now(UTC))
            ).inserted_primary_key[0]
            connection.execute(
                insert(t.Image).values(
                    dataset_id=dataset_id, path="/x/a.jpg", file_name="a.jpg", created_at=datetime.now(UTC)
                )
            )
            assert connection.scalar(select(t.Image.dataset_id)) == dataset_id
    finally:
        engine.dispose()


def test_every_revision_steps_up_and_down_one_at_a_time(empty_url: str) -> None:
    """Each migration's upgrade and downgrade work on their own, in order (covers later revisions too)."""
    script = ScriptDirectory.from_config(migrate.alembic_config(empty_url))
    revisions = [r.revision for r in reversed(list(script.walk_revisions()))]
    assert revisions, "no migrations found"
    for revision in revisions:
        migrate.upgrade(empty_url, revision)
        assert _schema(empty_url)[2] == revision
    _assert_at_head(empty_url)
    for expected in [*reversed(revisions[:-1]), None]:
        migrate.downgrade(empty_url, "-1")
        assert _schema(empty_url)[2] == expected
    _assert_at_base(empty_url)


def test_autogenerate_finds_no_difference_between_migrations_and_orm(any_db: Engine) -> None:
    with any_db.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True, "compare_server_default": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == [], f"the migrations and the ORM differ on {any_db.dialect.name}; write a migration:\n{diff}"


def test_migrating_an_unreachable_store_is_a_store_error() -> None:
    with pytest.raises(StoreError, match=r"migration failed on 127\.0\.0\.1:1/nothing"):
        migrate.upgrade("postgresql+psycopg://postgres@127.0.0.1:1/nothing")


@pytest.mark.parametrize(("action", "revision"), [("upgrade", "no-such-revision"), ("downgrade", "-1")])
def test_a_bad_migration_target_is_a_store_error(tmp_path: Path, action: str, revision: str) -> None:
    url = f"sqlite:///{tmp_path / 'vicap.sqlite'}"  # empty: nothing to downgrade
    with pytest.raises(StoreError):
        getattr(migrate, action)(url, revision)


# --------------------------------------------------------------------------- latest_scores


def _add_evaluation(
    connection: Connection,
    *,
    when: datetime,
    dataset_id: int,
    model_id: int | None,
    split: str = "test",
    baseline: bool = False,
    tokenization: str = "syllable",
    bleu_4: float,
) -> int:
    return connection.execute(
        insert(t.Evaluation).values(
            model_id=model_id,
            dataset_id=dataset_id,
            split=split,
            tokenization=tokenization,
            is_baseline=baseline,
            bleu_1=bleu_4,
            bleu_2=bleu_4,
            bleu_3=bleu_4,
            bleu_4=bleu_4,
            rouge_l=bleu_4,
            n_images=10,
            created_at=when,
        )
    ).inserted_primary_key[0]


def test_latest_scores_view_keeps_the_newest_evaluation_per_model_dataset_split(any_db: Engine) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    day = timedelta(days=1)
    with any_db.begin() as c:
        d1 = c.execute(insert(t.Dataset).values(name="uitviic", format="coco", created_at=t0)).inserted_primary_key[0]
        d2 = c.execute(insert(t.Dataset).values(name="synth", format="synth", created_at=t0)).inserted_primary_key[0]
        m1, m2 = (
            c.execute(
                insert(t.Model).values(
                    name=name,
                    family="cnn-lstm",
                    artifact_dir="/m",
                    onnx_quantized=False,
                    hyperparameters={},
                    created_at=t0,
                )
            ).inserted_primary_key[0]
            for name in ("m1", "m2")
        )
        _add_evaluation(c, when=t0, dataset_id=d1, model_id=m1, bleu_4=0.10)
        newest_m1 = _add_evaluation(c, when=t0 + 2 * day, dataset_id=d1, model_id=m1, bleu_4=0.30)
        _add_evaluation(c, when=t0 + day, dataset_id=d1, model_id=m1, bleu_4=0.20)  # inserted later, but older
        m1_val = _add_evaluation(c, when=t0, dataset_id=d1, model_id=m1, split="val", bleu_4=0.15)
        m1_word = _add_evaluation(c, when=t0, dataset_id=d1, model_id=m1, tokenization="word", bleu_4=0.12)
        m1_d2 = _add_evaluation(c, when=t0, dataset_id=d2, model_id=m1, bleu_4=0.50)
        _add_evaluation(c, when=t0, dataset_id=d1, model_id=m2, bleu_4=0.05)
        tie_m2 = _add_evaluation(c, when=t0, dataset_id=d1, model_id=m2, bleu_4=0.06)  # same time: higher id wins
        _add_evaluation(c, when=t0, dataset_id=d1, model_id=None, baseline=True, bleu_4=0.31)
        baseline = _add_evaluation(c, when=t0 + 3 * day, dataset_id=d1, model_id=None, baseline=True, bleu_4=0.313)
        # external predictions (no model, not the baseline) are not a model's score
        _add_evaluation(c, when=t0 + 5 * day, dataset_id=d1, model_id=None, bleu_4=0.99)

    with any_db.connect() as c:
        rows = c.execute(
            text(
                "SELECT evaluation_id, model_name, dataset_name, split, tokenization, is_baseline, bleu_4 FROM latest_scores"
            )
        ).all()
    got = {
        row.evaluation_id: (
            row.model_name,
            row.dataset_name,
            row.split,
            row.tokenization,
            bool(row.is_baseline),
            row.bleu_4,
        )
        for row in rows
    }
    assert got == {
        newest_m1: ("m1", "uitviic", "test", "syllable", False, 0.30),
        m1_val: ("m1", "uitviic", "val", "syllable", False, 0.15),
        m1_word: ("m1", "uitviic", "test", "word", False, 0.12),
        m1_d2: ("m1", "synth", "test", "syllable", False, 0.50),
        tie_m2: ("m2", "uitviic", "test", "syllable", False, 0.06),
        baseline: (None, "uitviic", "test", "syllable", True, 0.313),
    }


# --------------------------------------------------------------------------- ensure_schema


def test_ensure_schema_upgrades_an_empty_sqlite_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'vicap.sqlite'}"
    engine = make_engine(url)
    try:
        migrate.ensure_schema(engine, url)
        assert migrate.current_revision(engine) == migrate.head_revision(url)
        assert set(inspect(engine).get_table_names()) >= ORM_TABLES
        migrate.ensure_schema(engine, url)  # at head: nothing to do
    finally:
        engine.dispose()


def test_ensure_schema_leaves_a_foreign_sqlite_database_alone(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'theirs.sqlite'}"
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY)"))
        with pytest.raises(StoreError, match="run `vicap-jobs db upgrade`"):
            migrate.ensure_schema(engine, url)
        assert set(inspect(engine).get_table_names()) == {"notes"}
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_ensure_schema_refuses_postgres_behind_head(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    try:
        with pytest.raises(StoreError, match=r"schema is at nothing .*run `vicap-jobs db upgrade`"):
            migrate.ensure_schema(engine, postgres_url)
        assert inspect(engine).get_table_names() == [], "PostgreSQL must never be migrated behind the operator's back"

        migrate.upgrade(postgres_url)
        migrate.ensure_schema(engine, postgres_url)  # at head: fine

        migrate.downgrade(postgres_url, "base")
        with pytest.raises(StoreError, match="run `vicap-jobs db upgrade`"):
            migrate.ensure_schema(engine, postgres_url)
    finally:
        engine.dispose()


def test_open_store_creates_the_default_sqlite_store_under_vicap_home(vicap_env: Path) -> None:
    from vicap_jobs.cli.common import open_store

    settings, engine = open_store()
    assert settings.home == vicap_env
    assert Path(engine.url.database or "") == vicap_env / "vicap.sqlite"
    assert (vicap_env / "vicap.sqlite").is_file()
    assert migrate.current_revision(engine) == migrate.head_revision(settings.effective_database_url)


@pytest.mark.postgres
def test_open_store_on_an_empty_postgres_says_to_run_db_upgrade(
    vicap_setenv: Callable[[str, str | None], None], postgres_url: str
) -> None:
    from vicap_jobs.cli.common import open_store

    vicap_setenv("database_url", postgres_url)
    with pytest.raises(StoreError, match="vicap-jobs db upgrade"):
        open_store()


# --------------------------------------------------------------------------- 0003 moves data


def test_0003_moves_enqueue_times_off_heartbeat_and_records_pinned_queues(empty_url: str) -> None:
    """Rows written by 0002-era code: a queued chunk's heartbeat_at was its enqueue time; a --gpu job said so in params."""
    migrate.upgrade(empty_url, "0002")
    t0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    engine = make_engine(empty_url)
    try:
        with engine.begin() as c:
            insert_job = text(
                "INSERT INTO jobs (id, kind, status, params, total, done, failed, attempts, created_at) "
                "VALUES (:id, 'caption', :status, :params, 2, 0, 0, 0, :t)"
            )
            c.execute(insert_job, {"id": 1, "status": "running", "params": '{"device": "gpu1"}', "t": t0})
            c.execute(insert_job, {"id": 2, "status": "queued", "params": '{"device": null}', "t": t0})
            c.execute(insert_job, {"id": 3, "status": "succeeded", "params": '{"device": "gpu0"}', "t": t0})
            insert_chunk = text(
                "INSERT INTO job_chunks (id, job_id, seq, status, image_ids, n_images, attempts, heartbeat_at) "
                "VALUES (:id, 1, :seq, :status, '[]', 0, 0, :beat)"
            )
            c.execute(insert_chunk, {"id": 10, "seq": 0, "status": "queued", "beat": t0})
            c.execute(insert_chunk, {"id": 11, "seq": 1, "status": "running", "beat": t0 + timedelta(minutes=5)})
        migrate.upgrade(empty_url, "0003")
        with engine.connect() as c:
            chunks = {
                row.id: (row.enqueued_at, row.heartbeat_at)
                for row in c.execute(text("SELECT id, enqueued_at, heartbeat_at FROM job_chunks"))
            }
            queues = dict(c.execute(text("SELECT id, queue FROM jobs ORDER BY id")).all())

        def utc(moment: datetime | str | None) -> datetime | None:
            if isinstance(moment, str):
                moment = datetime.fromisoformat(moment)
            return None if moment is None else (moment if moment.tzinfo else moment.replace(tzinfo=UTC))

        assert (utc(chunks[10][0]), chunks[10][1]) == (t0, None)  # queued: the time moved to enqueued_at
        assert (chunks[11][0], utc(chunks[11][1])) == (None, t0 + timedelta(minutes=5))  # running: a real heartbeat
        assert queues == {1: "gpu.1", 2: None, 3: None}  # finished jobs are never re-published

        migrate.downgrade(empty_url, "0002")  # and back: the queued chunk's time returns to heartbeat_at
        with engine.connect() as c:
            beat = c.execute(text("SELECT heartbeat_at FROM job_chunks WHERE id = 10")).scalar()
        assert utc(beat) == t0
    finally:
        engine.dispose()


def test_0005_adds_cider_d_null_for_older_evaluations_and_to_the_view(empty_url: str) -> None:
    """An evaluation stored at 0004 reads back through latest_scores with cider_d NULL; downgrade keeps the view."""
    migrate.upgrade(empty_url, "0004")
    engine = make_engine(empty_url)
    t0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    try:
        with engine.begin() as c:
            c.execute(
                text("INSERT INTO datasets (id, name, format, created_at) VALUES (1, 'uitviic', 'coco', :t)"), {"t": t0}
            )
            c.execute(
                text(
                    "INSERT INTO evaluations (id, dataset_id, split, tokenization, bleu_1, bleu_2, bleu_3, bleu_4, "
                    "rouge_l, n_images, is_baseline, created_at) "
                    "VALUES (5, 1, 'test', 'syllable', 0.6, 0.4, 0.3, 0.2, 0.5, 10, :yes, :t)"
                ),
                {"yes": True, "t": t0},
            )
        migrate.upgrade(empty_url, "0005")
        with engine.begin() as c:
            assert c.execute(text("SELECT evaluation_id, bleu_4, cider_d FROM latest_scores")).all() == [(5, 0.2, None)]
            c.execute(text("UPDATE evaluations SET cider_d = 0.75 WHERE id = 5"))
            assert c.execute(text("SELECT cider_d FROM latest_scores")).scalar() == 0.75
        migrate.downgrade(empty_url, "0004")
        with engine.connect() as c:
            assert c.execute(text("SELECT evaluation_id, bleu_4 FROM latest_scores")).all() == [(5, 0.2)]
            assert "cider_d" not in {column["name"] for column in inspect(c).get_columns("evaluations")}
    finally:
        engine.dispose()


def test_0006_adds_artifact_columns_null_for_older_models_and_keeps_the_view(empty_url: str) -> None:
    """A model stored at 0005 reads back local-only (both columns NULL); its scores stay in latest_scores both ways."""
    migrate.upgrade(empty_url, "0005")
    engine = make_engine(empty_url)
    t0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    try:
        with engine.begin() as c:
            c.execute(
                text("INSERT INTO datasets (id, name, format, created_at) VALUES (1, 'uitviic', 'coco', :t)"), {"t": t0}
            )
            c.execute(
                text(
                    "INSERT INTO models (id, name, family, artifact_dir, onnx_quantized, hyperparameters, created_at) "
                    "VALUES (3, 'm', 'cnn-lstm', '/models/m', :no, '{}', :t)"
                ),
                {"no": False, "t": t0},
            )
            c.execute(
                text(
                    "INSERT INTO evaluations (id, model_id, dataset_id, split, tokenization, bleu_1, bleu_2, bleu_3, "
                    "bleu_4, rouge_l, n_images, is_baseline, created_at) "
                    "VALUES (5, 3, 1, 'test', 'syllable', 0.6, 0.4, 0.3, 0.2, 0.5, 10, :no, :t)"
                ),
                {"no": False, "t": t0},
            )
        migrate.upgrade(empty_url, "0006")
        with engine.begin() as c:
            assert c.execute(text("SELECT artifacts_url, artifact_digests FROM models")).all() == [(None, None)]
            assert c.execute(text("SELECT evaluation_id, model_name FROM latest_scores")).all() == [(5, "m")]
            c.execute(
                text("UPDATE models SET artifacts_url = 's3://b/a/m/0123456789abcdef', artifact_digests = :d"),
                {"d": '{"config.json": "ab"}'},
            )
        with engine.connect() as c:
            row = c.execute(select(t.Model.artifacts_url, t.Model.artifact_digests)).one()
            assert tuple(row) == ("s3://b/a/m/0123456789abcdef", {"config.json": "ab"})
        migrate.downgrade(empty_url, "0005")
        with engine.connect() as c:
            assert c.execute(text("SELECT evaluation_id, model_name FROM latest_scores")).all() == [(5, "m")]
            columns = {column["name"] for column in inspect(c).get_columns("models")}
            assert not columns & {"artifacts_url", "artifact_digests"}
    finally:
        engine.dispose()
