"""One typed settings object, read from ``VICAP_*`` environment variables.

Hyper-parameters are dataclasses next to the models; only deployment choices
(where files live, which store and broker to use) are settings.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from vicap_jobs.errors import ConfigError

SUPPORTED_DB_SCHEMES = ("sqlite", "postgresql", "postgres", "postgresql+psycopg")
SUPPORTED_BROKER_SCHEMES = ("redis", "rediss", "sqla+sqlite", "filesystem", "memory")


def _default_home() -> Path:
    return Path.home() / ".local" / "share" / "vicap-jobs"


class Settings(BaseSettings):
    """Effective configuration; ``vicap-jobs config`` prints it without secrets."""

    model_config = SettingsConfigDict(env_prefix="VICAP_", extra="ignore")

    home: Path = Field(
        default_factory=_default_home,
        description="Artifacts: checkpoints, feature caches, ONNX files, embedded store and broker.",
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the store; default: SQLite file under VICAP_HOME."
    )
    broker_url: str | None = Field(
        default=None, description="Celery broker URL; default: the embedded SQLite broker under VICAP_HOME."
    )
    result_backend: str | None = Field(
        default=None, description="Celery result backend; job state lives in the store, so none is needed."
    )
    heartbeat_s: float = Field(default=10.0, gt=0, description="How often a busy worker records that it is alive.")
    stale_after_s: float = Field(
        default=90.0, gt=0, description="A running chunk whose worker is silent this long is re-enqueued."
    )
    chunk_size: int = Field(default=256, gt=0, description="Images per caption chunk (one Celery task).")
    max_chunk_attempts: int = Field(
        default=5,
        gt=0,
        description="A chunk whose worker died this many times is given up (its images get error rows).",
    )
    max_sweep_runs: int = Field(
        default=24, gt=0, description="A sweep with more runs (grid points x repeats) is refused unless forced."
    )
    visibility_timeout_s: int = Field(
        default=3 * 3600, gt=0, description="Redis visibility timeout; longer than the longest chunk."
    )
    nightly_cron: str = Field(
        default="0 2 * * *",
        description="Cron (minute hour day month weekday) of the nightly re-evaluation, local time.",
    )
    torch_threads: int | None = Field(
        default=None, gt=0, description="Threads for torch/onnxruntime; default: all cores."
    )
    plugins: str | None = Field(
        default=None,
        description="Comma-separated Python modules every process imports first; they register families or job kinds.",
    )
    web_token: str | None = Field(
        default=None,
        description="Secret every web request must carry (Bearer header or the login cookie); required off 127.0.0.1.",
    )
    web_roots: str | None = Field(
        default=None,
        description="Folders (separated by ':') under which the web view may submit caption jobs; none: submission off.",
    )
    web_max_upload_mb: float = Field(default=20.0, gt=0, description="Largest photo the web view accepts, in MB.")
    web_max_upload_pixels: int = Field(
        default=40_000_000, gt=0, description="Most pixels (width x height) of a photo the web view decodes."
    )

    artifacts_url: str | None = Field(
        default=None,
        description="Object storage URL (e.g. s3://vicap/artifacts/) that trained models and exports are uploaded to, "
        "so workers on other hosts can download them; none: artifacts stay on the local disk.",
    )
    read_ahead: int = Field(
        default=1, ge=0, le=8, description="Batches of photos a worker reads while the engine captions one (0: off)."
    )
    storage_concurrency: int = Field(
        default=8, gt=0, le=64, description="Objects a worker downloads at once from object storage."
    )
    storage_retries: int = Field(
        default=4,
        gt=0,
        description="Attempts of one object storage call (backoff 0.5 s doubling) before the chunk goes back to the queue.",
    )

    @field_validator("artifacts_url")
    @classmethod
    def _check_artifacts_url(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        if "://" not in value or value.lower().startswith("file://"):
            raise ValueError(
                f"VICAP_ARTIFACTS_URL must be an object storage URL such as s3://bucket/prefix; got {mask_password(value)!r}"
            )
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in SUPPORTED_DB_SCHEMES:
            raise ValueError(
                f"VICAP_DATABASE_URL must start with one of {', '.join(s + '://' for s in SUPPORTED_DB_SCHEMES)}; got {mask_password(value)!r}"
            )
        if scheme in ("postgresql", "postgres"):  # the driver installed with vicap-jobs is psycopg 3
            value = "postgresql+psycopg://" + value.split("://", 1)[1]
        return value

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in SUPPORTED_BROKER_SCHEMES:
            raise ValueError(
                f"VICAP_BROKER_URL must start with one of {', '.join(s + '://' for s in SUPPORTED_BROKER_SCHEMES)}; got {mask_password(value)!r}"
            )
        return value

    @property
    def effective_database_url(self) -> str:
        """The store URL, defaulting to an embedded SQLite file under ``home``."""
        return self.database_url or f"sqlite:///{self.home / 'vicap.sqlite'}"

    @property
    def effective_broker_url(self) -> str:
        """The broker URL; the embedded default needs no server."""
        return self.broker_url or f"sqla+sqlite:///{self.home / 'broker.sqlite'}"

    @property
    def is_embedded_broker(self) -> bool:
        return self.effective_broker_url.startswith(("sqla+sqlite", "filesystem", "memory"))

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def datasets_dir(self) -> Path:
        return self.home / "datasets"

    def public_view(self) -> dict[str, str]:
        """Effective settings with passwords masked, for display."""
        return {
            "VICAP_HOME": str(self.home),
            "VICAP_DATABASE_URL": mask_password(self.effective_database_url),
            "VICAP_BROKER_URL": mask_password(self.effective_broker_url),
            "VICAP_RESULT_BACKEND": mask_password(self.result_backend or "(none)"),
            "VICAP_HEARTBEAT_S": str(self.heartbeat_s),
            "VICAP_STALE_AFTER_S": str(self.stale_after_s),
            "VICAP_CHUNK_SIZE": str(self.chunk_size),
            "VICAP_MAX_CHUNK_ATTEMPTS": str(self.max_chunk_attempts),
            "VICAP_MAX_SWEEP_RUNS": str(self.max_sweep_runs),
            "VICAP_VISIBILITY_TIMEOUT_S": str(self.visibility_timeout_s),
            "VICAP_NIGHTLY_CRON": self.nightly_cron,
            "VICAP_TORCH_THREADS": str(self.torch_threads or "(all cores)"),
            "VICAP_PLUGINS": self.plugins or "(none)",
            "VICAP_WEB_TOKEN": "***" if self.web_token else "(none)",
            "VICAP_WEB_ROOTS": self.web_roots or "(none: submitting folders from the web view is off)",
            "VICAP_WEB_MAX_UPLOAD_MB": str(self.web_max_upload_mb),
            "VICAP_WEB_MAX_UPLOAD_PIXELS": str(self.web_max_upload_pixels),
            "VICAP_ARTIFACTS_URL": mask_password(self.artifacts_url or "(none: artifacts stay on this host)"),
            "VICAP_READ_AHEAD": str(self.read_ahead),
            "VICAP_STORAGE_CONCURRENCY": str(self.storage_concurrency),
            "VICAP_STORAGE_RETRIES": str(self.storage_retries),
        }

    @property
    def web_root_paths(self) -> list[Path]:
        """The allowed roots of ``VICAP_WEB_ROOTS``, resolved (links followed), in the order given."""
        if not self.web_roots:
            return []
        return [Path(part).expanduser().resolve() for part in self.web_roots.split(":") if part.strip()]


def mask_password(url: str) -> str:
    """Hide the password part of ``scheme://user:password@host``."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    if ":" in creds:
        creds = creds.split(":", 1)[0] + ":***"
    return f"{scheme}://{creds}@{host}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings validated once per process; a bad value raises ConfigError."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = "VICAP_" + str(first["loc"][0]).upper() if first.get("loc") else "VICAP_*"
        raise ConfigError(f"invalid {field}: {first['msg'].removeprefix('Value error, ')}") from None


def reset_settings() -> None:
    """Forget cached settings (tests change environment variables)."""
    get_settings.cache_clear()
