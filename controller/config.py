"""Controller settings: CLI flags > environment (`LEPTON_CONTROLLER_*`) > a TOML file.

Nested fields use `__` in the environment, e.g. `LEPTON_CONTROLLER_MQTT__HOST=broker`.
Every model forbids unknown keys so a typo in a setting is an error, not silence.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import SettingsConfigDict

from lepton_edge.shared.settings import LayeredSettings, load_layered

DEFAULT_CONFIG_FILE = Path("/etc/lepton/controller.toml")


def default_state_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local/share")) / "lepton"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MqttSettings(_Strict):
    enabled: bool = Field(default=True, description="false runs the API without a broker")
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    protocol: Literal["5", "3.1.1"] = Field(
        default="5", description="3.1.1 for brokers without MQTT 5 (amqtt); no shared subscriptions"
    )
    username: str | None = "lepton-controller"
    password: str | None = None
    tls: bool = False
    ca_file: Path | None = None
    client_id: str | None = Field(
        default=None,
        description="default: lepton-controller-<host>-<hash of state_dir and http_port>, "
        "stable across restarts, so the broker keeps this controller's session and what "
        "arrives meanwhile",
    )
    session_expiry_s: int = Field(
        default=24 * 3600, ge=0, description="how long the broker keeps our session (v5)"
    )
    receive_max: int = Field(
        default=1000,
        ge=1,
        le=65535,
        description="messages the broker may send before our acknowledgements (v5); we "
        "acknowledge each only after it is committed",
    )
    shared_subscription_group: str | None = Field(
        default=None, description="e.g. 'controllers': several controllers share the load"
    )
    public_host: str | None = Field(
        default=None, description="broker host handed to enrolling devices (default: host)"
    )
    public_port: int | None = Field(default=None, ge=1, le=65535)
    keepalive_s: int = Field(default=30, ge=5)


class IngestSettings(_Strict):
    """Batched writes: the MQTT thread only enqueues, a writer thread commits in batches."""

    flush_interval_ms: int = Field(default=200, ge=1)
    batch_max: int = Field(default=5000, ge=1)
    queue_max: int = Field(default=200_000, ge=100)
    history_per_device: int = Field(default=300, ge=1, description="telemetry samples kept")
    history_max_age_s: float | None = Field(
        default=None,
        gt=0,
        description="also drop samples older than this (by their timestamp); None: by count only",
    )
    events_per_device: int = Field(default=200, ge=1)
    bulk_copy: bool = Field(
        default=True,
        description="on PostgreSQL (psycopg), write telemetry with COPY; false: executemany",
    )
    prune_interval_s: float = Field(default=10.0, gt=0)
    prune_slice: int = Field(
        default=500, ge=1, description="devices pruned per turn of the writer between batches"
    )
    max_seq_jump: int = Field(
        default=1_000_000,
        ge=1,
        description="a telemetry seq further ahead than this is suspect until the next goes on",
    )


class RolloutDefaults(_Strict):
    waves: list[float] = Field(default=[1.0, 10.0, 50.0, 100.0], min_length=1)
    success_threshold: float = Field(
        default=1.0, gt=0, le=1, description="share of a wave that must be healthy"
    )
    error_threshold: float = Field(
        default=0.0, ge=0, lt=1, description="share of a wave allowed to fail before pausing"
    )
    wave_timeout_s: float = Field(default=600.0, gt=0)
    soak_s: float = Field(default=30.0, ge=0, description="healthy time before the next wave")
    require_inferring: bool = Field(default=True, description="healthy needs inference frames")
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    p99_factor: float = Field(default=1.5, ge=1, description="allowed p99 growth vs before")
    max_concurrent_deploys: int | None = Field(
        default=None,
        ge=1,
        description="devices downloading and activating at once (None: a whole wave), so a "
        "wave does not saturate the controller's uplink",
    )
    resend_after_s: float = Field(
        default=30.0, gt=0, description="resend an unanswered command, then back off (x2)"
    )
    command_timeout_s: float = Field(
        default=24 * 3600, gt=0, description="give a command up without a final reply"
    )
    tick_s: float = Field(default=1.0, gt=0, description="how often the rollout loop runs")


class SelectionSettings(_Strict):
    tolerance_points: float | None = Field(
        default=None, ge=0, description="accuracy loss allowed vs fp32; default: the manifest's"
    )
    fast_factor: float = Field(
        default=2.5, ge=1, description="'fast' = within this factor of the fastest variant"
    )
    cheap_margin: float = Field(
        default=0.25,
        ge=0,
        description="'critical' takes the smallest file among variants this close to the fastest",
    )
    accuracy_noise_points: float = Field(
        default=0.1, ge=0, description="accuracies this close count as equal; precision breaks ties"
    )


class HomeAssistantSettings(_Strict):
    """Home Assistant MQTT discovery (off by default: it publishes retained messages outside
    the lepton topic tree, which the controller's broker account must be allowed to write)."""

    discovery: bool = Field(default=False, description="announce every device to Home Assistant")
    discovery_prefix: str = Field(
        default="homeassistant",
        pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$",
        description="Home Assistant's discovery prefix (its MQTT integration's setting)",
    )
    controller_id: str = Field(
        default="lepton",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="names this fleet's controller as every device's via_device (replicas "
        "share it)",
    )
    broker_username: str | None = Field(
        default=None,
        description="a broker login for Home Assistant that `broker-config` writes: read on "
        "the lepton tree, read and write on the discovery prefix",
    )
    broker_password: str | None = None


class ControllerSettings(LayeredSettings):
    model_config = SettingsConfigDict(
        env_prefix="LEPTON_CONTROLLER_", env_nested_delimiter="__", extra="forbid"
    )

    state_dir: Path = Field(default_factory=default_state_dir)
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default SQLite (WAL) in state_dir"
    )
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    public_url: str | None = Field(
        default=None, description="URL agents use to reach this controller (default from http)"
    )
    auth_required: bool = True
    registration: Literal["open", "enrolled"] = Field(
        default="open",
        description="enrolled: only devices that enrolled (lepton-agent enroll) are registered; "
        "messages from any other device id are counted and dropped. open: any device that "
        "speaks the contract appears (demos, an anonymous broker)",
    )
    bootstrap_admin_token: str | None = Field(
        default=None, description="an admin token registered (hashed) at startup"
    )
    max_bundle_upload_mb: int = Field(default=512, ge=1)
    artifact_offload_uri: str | None = Field(
        default=None,
        pattern=r"^/[A-Za-z0-9._/-]*/$",
        description="the internal location of the web server in front (nginx) that serves "
        "artifact_dir: the controller checks the grant and answers X-Accel-Redirect to "
        "<uri><sha256>, and the server sends the file itself (sendfile, Range)",
    )
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    rollout: RolloutDefaults = Field(default_factory=RolloutDefaults)
    selection: SelectionSettings = Field(default_factory=SelectionSettings)
    homeassistant: HomeAssistantSettings = Field(default_factory=HomeAssistantSettings)
    rollout_loop: bool = Field(default=True, description="false: API only, no rollout loop")

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    # --- derived -----------------------------------------------------------------------------

    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'controller.db'}"

    def base_url(self) -> str:
        if self.public_url:
            return self.public_url
        host = "127.0.0.1" if self.http_host in ("0.0.0.0", "::") else self.http_host
        return f"http://{host}:{self.http_port}"

    def artifact_dir(self) -> Path:
        return self.state_dir / "artifacts"

    def bundle_dir(self) -> Path:
        return self.state_dir / "bundles"

    def key_path(self) -> Path:
        return self.state_dir / "keys" / "signing.pem"


def load_settings(config_file: Path | None = None, **overrides: Any) -> ControllerSettings:
    """Settings from flags (`overrides`) > `LEPTON_CONTROLLER_*` env > TOML (`config_file`, else
    /etc/lepton/controller.toml if present), as for the agent (`shared.settings`)."""
    return load_layered(ControllerSettings, config_file, DEFAULT_CONFIG_FILE, overrides)
