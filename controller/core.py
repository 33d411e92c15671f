"""The fleet controller's parts, built in one place: database, bundle store, fleet state,
leader election, rollout engine and (once started) the MQTT bridge. No web framework here:
the API (`lepton_edge.controller.app`) and in-process callers share this object."""

from __future__ import annotations

from lepton_edge.controller import fleet
from lepton_edge.controller.bridge import Bridge
from lepton_edge.controller.bundles import BundleStore
from lepton_edge.controller.config import ControllerSettings
from lepton_edge.controller.db import Database
from lepton_edge.controller.fleet import Fleet
from lepton_edge.controller.leader import make_leader
from lepton_edge.controller.observability import Metrics
from lepton_edge.controller.rollout import RolloutEngine
from lepton_edge.controller.security import Scope, register_token
from lepton_edge.shared.messages import CommandMessage


class Controller:
    def __init__(self, settings: ControllerSettings) -> None:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.db = Database(settings.db_url())
        self.store = BundleStore(
            settings.artifact_dir(), settings.bundle_dir(), settings.key_path()
        )
        self.fleet = Fleet(
            shared=settings.mqtt.shared_subscription_group is not None,
            max_seq_jump=settings.ingest.max_seq_jump,
            enrolled_only=settings.registration == "enrolled",
            copy=settings.ingest.bulk_copy,
        )
        self.leader = make_leader(settings.db_url())
        self.metrics = Metrics()
        self.engine = RolloutEngine(
            settings,
            self.db,
            self.publish,
            self.leader,
            grant=self.store.grant,
            observe_wave=self.metrics.rollout_wave_seconds.observe,
        )
        self.bridge: Bridge | None = None
        self.metrics.watch(self)
        self.started = False

    def publish(self, device_id: str, command: CommandMessage) -> bool:
        return self.bridge.publish_command(device_id, command) if self.bridge else False

    def remove_device(self, device_id: str) -> bool:
        """Forget a device in the registry, then on the broker: its retained state (or the next
        controller start would register it again from that) and its Home Assistant entities."""
        with self.db.session() as session:
            if not fleet.remove_device(session, device_id):
                return False
        if self.bridge is not None:
            self.bridge.forget(device_id)
        return True

    def start(self) -> None:
        """Migrate, register the bootstrap token, start bridge and rollout loop (once)."""
        if self.started:
            return
        self.started = True
        self.db.migrate()
        if self.settings.bootstrap_admin_token:
            with self.db.session() as session:
                register_token(
                    session, self.settings.bootstrap_admin_token, Scope.ADMIN, "bootstrap"
                )
        if self.settings.mqtt.enabled:
            self.bridge = Bridge(
                self.settings,
                self.db,
                self.fleet,
                observe_batch=self.metrics.ingest_batch_seconds.observe,
                observe_lag=self.metrics.ingest_lag_seconds.observe,
            )
            self.bridge.start()
        if self.settings.rollout_loop:
            self.engine.start()

    def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        self.engine.stop()
        if self.bridge:
            self.bridge.stop()
        self.leader.close()
        self.db.close()
