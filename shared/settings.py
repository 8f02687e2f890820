"""One typed settings object read from the environment (names from the configuration spec).

Entry points call `load_settings()` once and pass the object down; nothing imports a global.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

CommaList = Annotated[list[str], NoDecode]
FLY_BOOT_GRACE_SECONDS = 120.0  # MACHINE_BOOT_GRACE_SECONDS when LAUNCHER=fly and it is not set
_PER_QUEUE = re.compile(r"queue_(?P<limit_queue>[a-z0-9_]+)_limit|worker_(?P<timeout_queue>[a-z0-9_]+)_timeout")


class _PerQueueEnvironment(PydanticBaseSettingsSource):
    """QUEUE_<NAME>_LIMIT and WORKER_<NAME>_TIMEOUT from the environment, for any name (the
    declared settings source only reads declared fields)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return {
            name.lower(): value for name, value in os.environ.items() if _PER_QUEUE.fullmatch(name.lower()) and value
        }


class Settings(BaseSettings):
    """Service configuration. Durations end in `_seconds` or `_ms` as the env var names say."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True, env_ignore_empty=True)

    environment: Literal["development", "test", "production"] = "production"

    database_url: str = "postgresql://localhost/content_processor"
    # An unpooled URL for connections that need a session of their own (LISTEN, advisory locks,
    # migrations): a pooler in transaction mode, like Managed Postgres' PgBouncer, breaks both.
    database_direct_url: str | None = None
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

    # Per function: QUEUE_<NAME>_LIMIT (initial fleet-wide limit) and WORKER_<NAME>_TIMEOUT (ms)
    # override what the function declares (functions/handlers/<name>.py). Any name is read; names
    # that match no function are reported at start (Registry.configuration_problems).
    queue_limits: dict[str, Annotated[int, Field(ge=0, le=1000)]] = Field(default_factory=dict)
    worker_timeouts_ms: dict[str, Annotated[int, Field(ge=100)]] = Field(default_factory=dict)

    # Fair claims (issue 13): tenants take turns within a queue (false: priority, then time, across
    # the queue), and the most jobs one tenant runs at once per queue (unset: no cap but the queue's).
    # Both seed a queue's row when it is created; afterwards PUT /admin/queues/{name}/limits decides.
    claim_fairness: bool = True
    tenant_concurrency_limit: int | None = Field(None, ge=0, le=1000)

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
    # A schedule occurrence found due later than this (nothing ran: outage, pause of every API
    # instance) is skipped under misfire "skip"; "runOnce" runs the latest one whatever its delay.
    scheduler_misfire_grace_seconds: float = Field(60.0, ge=0)

    launcher: Literal["local", "fly"] = "local"
    local_machine_log_dir: str | None = None
    local_launcher_fork: bool = True  # local machines forked from a pre-imported server (fast start)
    fly_api_token: SecretStr | None = None
    fly_api_hostname: str = "https://api.machines.dev"
    fly_worker_app: str | None = None
    worker_image: str | None = None
    fly_region: str | None = None
    fly_regions: CommaList = Field(default_factory=list)  # placement order on capacity errors; FLY_REGION if empty
    fly_gone_confirm_seconds: float = Field(10.0, ge=0)  # 404s must span this long before a machine is gone
    fly_leftover_seconds: float = Field(60.0, gt=0)  # failed/stopped machines Fly keeps are destroyed after this
    warm_pool_size: int = Field(0, ge=0, le=100)

    machine_max_jobs: int = Field(100, ge=1)
    machine_idle_seconds: float = Field(10.0, ge=0)
    machine_concurrency: int = Field(1, ge=1, le=256)
    machine_shutdown_grace_seconds: float = Field(20.0, ge=0)  # SIGTERM: time held jobs get to finish
    # A launching machine counts as capacity this long; on Fly an image pull alone can take tens
    # of seconds ("low double digit seconds", Fly docs), so LAUNCHER=fly defaults to FLY_BOOT_GRACE.
    machine_boot_grace_seconds: float = Field(30.0, gt=0)
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

    # Live events (GET /events, the dashboard), per API instance: how many recent events a client
    # reconnecting with Last-Event-ID can resume from, how many events may wait for one client
    # before it is dropped (it reconnects and resumes), how many clients may stream at once, and
    # how often an idle stream gets a keep-alive comment.
    events_replay_size: int = Field(10_000, ge=0, le=1_000_000)
    events_client_buffer: int = Field(1_000, ge=1, le=100_000)
    events_max_subscribers: int = Field(1_000, ge=1, le=100_000)
    # One tenant's share of those (streams and ?wait requests), so one cannot take every slot.
    events_max_subscribers_per_tenant: int = Field(250, ge=1, le=100_000)
    events_keepalive_seconds: float = Field(15.0, gt=0, le=300)
    # An event stream ends after this long (the client reconnects and resumes): its credentials
    # are checked again, so a signed-out session or a revoked token stops receiving events.
    events_max_stream_seconds: float = Field(900.0, ge=1, le=86_400)

    # Extra modules that register functions on the `default` queue (imported by API and machines).
    default_function_modules: CommaList = Field(default_factory=list)

    log_level: str = "info"

    @model_validator(mode="before")
    @classmethod
    def _fly_boots_take_longer(cls, data: object) -> object:
        if isinstance(data, dict) and str(data.get("launcher", "")).lower() == "fly":
            if not any(str(key).lower() == "machine_boot_grace_seconds" for key in data):
                return {**data, "machine_boot_grace_seconds": FLY_BOOT_GRACE_SECONDS}
        return data

    @field_validator("outbound_allowlist", "cors_origins", "default_function_modules", "fly_regions", mode="before")
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

    @property
    def session_database_url(self) -> str:
        """DATABASE_DIRECT_URL, else DATABASE_URL: for LISTEN, session advisory locks and migrations."""
        return self.database_direct_url or self.database_url

    @property
    def fly_placement(self) -> list[str]:
        """Regions to try in order for a new Fly machine (empty: let Fly choose)."""
        return list(self.fly_regions) or ([self.fly_region] if self.fly_region else [])

    @model_validator(mode="before")
    @classmethod
    def _per_queue_settings(cls, data: Any) -> Any:
        """Fold `queue_<name>_limit` / `worker_<name>_timeout` (from the environment, the env
        file or keyword arguments) into `queue_limits` / `worker_timeouts_ms`."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        limits = dict(data.pop("queue_limits", None) or {})
        timeouts = dict(data.pop("worker_timeouts_ms", None) or {})
        for key in list(data):
            match = _PER_QUEUE.fullmatch(key.lower())
            if match is None:
                continue
            value = data.pop(key)
            if value in (None, ""):
                continue
            if match["limit_queue"]:
                limits[match["limit_queue"]] = value
            else:
                timeouts[match["timeout_queue"]] = value
        data["queue_limits"], data["worker_timeouts_ms"] = limits, timeouts
        return data

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _PerQueueEnvironment(settings_cls), env_settings, dotenv_settings, file_secret_settings)

    def machine_env(self) -> dict[str, str]:
        """Service settings a function machine needs, as environment variables (local launcher).

        On Fly these come from the worker app's secrets instead, never from the machine config.
        """
        env: dict[str, str] = {}
        for queue, limit in self.queue_limits.items():
            env[f"QUEUE_{queue.upper()}_LIMIT"] = str(limit)
        for queue, timeout_ms in self.worker_timeouts_ms.items():
            env[f"WORKER_{queue.upper()}_TIMEOUT"] = str(timeout_ms)
        for name, value in self.model_dump().items():
            if value is None or name in {"host", "port", "run_dispatcher", "queue_limits", "worker_timeouts_ms"}:
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
