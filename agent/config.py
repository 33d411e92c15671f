"""The agent's settings: one pydantic model fed by flags > `LEPTON_AGENT_*` env > TOML file.

`extra="forbid"` everywhere, so a typo in `/etc/lepton/agent.toml` is an error, not silence.
Nested fields use `__` in the environment: `LEPTON_AGENT_MQTT__HOST=broker.local`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import SettingsConfigDict

from lepton_edge.agent.engine import EngineSettings
from lepton_edge.agent.power import PolicySettings
from lepton_edge.agent.results import ResultSettings
from lepton_edge.shared.hardware import INFERENCE_FEATURES, GpuInfo
from lepton_edge.shared.settings import LayeredSettings, load_layered

DEFAULT_CONFIG_FILE = Path("/etc/lepton/agent.toml")
DEFAULT_STATE_DIR = Path("/var/lib/lepton")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MqttSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    protocol: Literal["5", "3.1.1"] = Field(
        default="5", description="MQTT 5 by default; 3.1.1 for brokers that lack it (amqtt)"
    )
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: Path | None = Field(default=None, description="pinned CA; system CAs when unset")
    cert_file: Path | None = Field(default=None, description="client certificate (mutual TLS)")
    key_file: Path | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    session_expiry_s: int = Field(
        default=7 * 24 * 3600, ge=0, description="how long the broker keeps our session (v5)"
    )
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    inflight_window: int = Field(default=50, ge=1, le=65535, description="unacked QoS 1 at once")

    @model_validator(mode="after")
    def _check(self) -> MqttSettings:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS needs both)")
        return self


class OutboxSettings(_Section):
    max_messages: int = Field(
        default=50_000, ge=10, description="bound of the offline queue; oldest telemetry goes first"
    )


class StoreSettings(_Section):
    min_free_mb: int = Field(default=64, ge=0, description="disk left free after a download")
    http_timeout_s: float = Field(default=20.0, gt=0, description="a stall longer than this fails")
    download_attempts: int = Field(
        default=6,
        ge=1,
        le=20,
        description="tries of each download, the manifest's too; each resumes with Range, "
        "0.5 s apart doubling up to 8 s (about 15 s in all: a controller restart)",
    )
    max_manifest_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)


class ProbeSettings(_Section):
    sysfs_root: Path = Field(default=Path("/sys"), description="a fake tree for tests")
    proc_root: Path = Path("/proc")
    battery: Literal["auto", "sysfs", "psutil", "simulated", "none"] = "auto"
    thermal: Literal["auto", "sysfs", "simulated", "none"] = "auto"
    gpu: Literal["auto", "nvml", "jetson", "none"] = "auto"


class SimulatedProfile(_Section):
    """Pretend to be another box (demos: a fleet of different devices on one machine)."""

    arch: str | None = None
    cpu_model: str | None = None
    cores: int | None = Field(default=None, ge=1)
    features: list[str] | None = None
    memory_mb: int | None = Field(default=None, ge=0)
    gpu: GpuInfo | None = None
    runtimes: dict[str, str] | None = None

    @model_validator(mode="after")
    def _known_features(self) -> SimulatedProfile:
        unknown = set(self.features or []) - set(INFERENCE_FEATURES)
        if unknown:
            raise ValueError(f"unknown features {sorted(unknown)}; use {list(INFERENCE_FEATURES)}")
        return self


class SimulatedBatterySettings(_Section):
    capacity_wh: float = Field(default=50.0, gt=0)
    start_percent: float = Field(default=100.0, ge=0, le=100)
    idle_w: float = Field(default=4.0, ge=0, description="draw with no inference")
    w_per_cpu_s: float = Field(
        default=15.0, ge=0, description="extra watts per CPU-second/second spent inferring"
    )
    charging: bool = False
    charge_w: float = Field(default=30.0, ge=0, description="charger power while charging")
    time_scale: float = Field(default=1.0, gt=0, description="simulated seconds per real second")


class SimulatedThermalSettings(_Section):
    ambient_c: float = 35.0
    c_per_w: float = Field(default=2.0, ge=0, description="steady-state rise per watt of load")
    idle_w: float = Field(default=2.0, ge=0)
    w_per_cpu_s: float = Field(default=15.0, ge=0)
    tau_s: float = Field(default=30.0, gt=0, description="thermal time constant")
    time_scale: float = Field(default=1.0, gt=0)


class SimulateSettings(_Section):
    profile: SimulatedProfile | None = None
    battery: SimulatedBatterySettings | None = None
    thermal: SimulatedThermalSettings | None = None


class AgentSettings(LayeredSettings):
    """Everything `lepton-agent run` needs; see README "Agent" for an example file."""

    model_config = SettingsConfigDict(
        env_prefix="LEPTON_AGENT_", env_nested_delimiter="__", extra="forbid"
    )

    device_id: str | None = Field(default=None, description="default: derived from machine-id")
    state_dir: Path = DEFAULT_STATE_DIR
    controller_key_file: Path | None = Field(
        default=None,
        description="pinned controller Ed25519 public key (PEM); default {state_dir}/controller.pem",
    )
    telemetry_interval_s: float = Field(default=5.0, gt=0, le=3600)
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="serve Prometheus metrics of this box on this port (for boxes scraped "
        "directly); null = off",
    )
    metrics_host: str = Field(default="127.0.0.1", description="address of the metrics port")
    log_json: bool = False
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    probes: ProbeSettings = Field(default_factory=ProbeSettings)
    simulate: SimulateSettings = Field(default_factory=SimulateSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    results: ResultSettings = Field(default_factory=ResultSettings)

    def controller_key_path(self) -> Path:
        return self.controller_key_file or self.state_dir / "controller.pem"


def load_settings(
    config_file: Path | None = None, overrides: dict[str, Any] | None = None
) -> AgentSettings:
    """Settings from `config_file` (default /etc/lepton/agent.toml if it exists), env and flags
    (`shared.settings`); a mistake is a one-line `UserError` naming the field and the sources."""
    return load_layered(AgentSettings, config_file, DEFAULT_CONFIG_FILE, overrides)
