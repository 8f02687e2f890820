"""One typed settings object read from the environment (names from the configuration spec).

Entry points call `load_settings()` once and pass the object down; nothing imports a global.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Service configuration. Durations end in `_seconds` or `_ms` as the env var names say."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True, env_ignore_empty=True)

    environment: Literal["development", "test", "production"] = "production"

    database_url: str = "postgresql://localhost/content_processor"
    database_pool_size: int = Field(20, ge=1, le=500)

    host: str = "0.0.0.0"
    port: int = 3000
    public_url: str | None = None  # how clients reach the API; used in printed examples only

    jwt_secret: SecretStr | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None

    aws_endpoint_url_s3: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_region: str = "auto"
    bucket_name: str = "content-processor"
    presign_ttl_seconds: int = Field(3600, ge=1, le=7 * 24 * 3600)

    smtp_host: str = "localhost"
    smtp_port: int = 587
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = True
    email_from: str = "Content Processor <no-reply@localhost>"

    webhook_signing_secret: SecretStr | None = None

    queue_images_limit: int = Field(5, ge=0, le=1000)
    queue_documents_limit: int = Field(5, ge=0, le=1000)
    queue_emails_limit: int = Field(10, ge=0, le=1000)
    queue_webhooks_limit: int = Field(20, ge=0, le=1000)
    queue_exports_limit: int = Field(5, ge=0, le=1000)
    queue_default_limit: int = Field(10, ge=0, le=1000)

    worker_images_timeout: int = Field(60_000, ge=100)
    worker_documents_timeout: int = Field(120_000, ge=100)
    worker_emails_timeout: int = Field(30_000, ge=100)
    worker_webhooks_timeout: int = Field(35_000, ge=100)  # above the 30 s max receiver timeout
    worker_exports_timeout: int = Field(600_000, ge=100)
    worker_default_timeout: int = Field(600_000, ge=100)

    lifeline_rescue_after: int = Field(300, ge=1)
    pruner_max_age: int = Field(604_800, ge=1)
    heartbeat_interval_seconds: float = Field(2.0, gt=0)
    dispatcher_poll_seconds: float = Field(1.0, gt=0)
    dispatcher_maintenance_seconds: float = Field(5.0, gt=0)
    # A frozen or vanished leader is replaced within about this (the leader renews every third of it).
    dispatcher_lease_seconds: float = Field(10.0, ge=1, le=300)
    # A failing duty (stager, lifeline, pruner, reconciler, scaler) retries after 1 s, 2 s, 4 s ... up to this.
    dispatcher_duty_backoff_max_seconds: float = Field(60.0, gt=0)
    run_dispatcher: bool = True

    launcher: Literal["local", "fly"] = "local"
    local_machine_log_dir: str | None = None
    local_launcher_fork: bool = True  # local machines forked from a pre-imported server (fast start)
    fly_api_token: SecretStr | None = None
    fly_api_hostname: str = "https://api.machines.dev"
    fly_worker_app: str | None = None
    worker_image: str | None = None
    fly_region: str | None = None
    warm_pool_size: int = Field(0, ge=0, le=100)

    machine_max_jobs: int = Field(100, ge=1)
    machine_idle_seconds: float = Field(10.0, ge=0)
    machine_concurrency: int = Field(1, ge=1, le=256)
    machine_shutdown_grace_seconds: float = Field(20.0, ge=0)  # SIGTERM: time held jobs get to finish
    machine_boot_grace_seconds: float = Field(30.0, gt=0)  # a launching machine counts as capacity this long
    # After n machines of a queue in a row failed at boot, its next launch waits base * 2^(n-1), up to the max.
    machine_boot_backoff_seconds: float = Field(2.0, gt=0)
    machine_boot_backoff_max_seconds: float = Field(300.0, gt=0)

    outbound_allow_private: bool = False
    outbound_allowlist: CommaList = Field(default_factory=list)

    rate_limit_per_minute: int = Field(600, ge=1)
    cors_origins: CommaList = Field(default_factory=list)
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    bulk_max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    metrics_token: SecretStr | None = None

    # Extra modules that register functions on the `default` queue (imported by API and machines).
    default_function_modules: CommaList = Field(default_factory=list)

    log_level: str = "info"

    @field_validator("outbound_allowlist", "cors_origins", "default_function_modules", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _fly_launcher_needs_its_settings(self) -> Self:
        if self.launcher == "fly" and self.fly_api_token is None:
            raise ValueError("FLY_API_TOKEN is required when LAUNCHER=fly")
        if self.launcher == "fly" and not (self.fly_worker_app and self.worker_image):
            raise ValueError("FLY_WORKER_APP and WORKER_IMAGE are required when LAUNCHER=fly")
        return self

    def queue_limit(self, queue: str) -> int:
        """The initial concurrency limit configured for `queue`."""
        return int(getattr(self, f"queue_{queue}_limit", self.queue_default_limit))

    def queue_timeout_seconds(self, queue: str) -> float:
        """The per-function timeout for `queue`, in seconds."""
        return int(getattr(self, f"worker_{queue}_timeout", self.worker_default_timeout)) / 1000

    def machine_env(self) -> dict[str, str]:
        """Service settings a function machine needs, as environment variables (local launcher).

        On Fly these come from the worker app's secrets instead, never from the machine config.
        """
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None or name in {"host", "port", "run_dispatcher"}:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if isinstance(value, list):
                value = ",".join(value)
            env[name.upper()] = str(value)
        return env


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment (and `.env`), applying keyword overrides."""
    return Settings(**overrides)  # type: ignore[arg-type]
