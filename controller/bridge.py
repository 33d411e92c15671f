"""The MQTT bridge: subscribes to every device's state/telemetry/event/reply, publishes commands.

Results (`…/result`, QoS 0) are a stream, not records: the bridge keeps only each device's
latest (and latest thumbnail) in memory, for the dashboard; nothing of them is written.

The paho network thread only appends raw messages to a queue; a writer thread validates them
with `lepton_edge.shared.messages.decode` and commits them to the registry in batches (every
`flush_interval_ms` or `batch_max` messages), so ingestion keeps up with a large fleet.
Malformed, oversized or misaddressed payloads are counted and dropped; nothing crashes.
"""

from __future__ import annotations

import collections
import logging
import os
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from lepton_edge.controller.config import ControllerSettings
from lepton_edge.controller.db import Database
from lepton_edge.controller.fleet import Batch, Fleet, IngestResult
from lepton_edge.shared import messages, topics
from lepton_edge.shared.errors import MessageError, TopicError
from lepton_edge.shared.messages import Event, InferenceResult, Reply, State, Telemetry
from lepton_edge.shared.topics import Kind

log = logging.getLogger(__name__)

SUBSCRIBED_KINDS = (Kind.STATE, Kind.TELEMETRY, Kind.EVENT, Kind.REPLY, Kind.RESULT)


@dataclass
class BridgeCounters:
    received: int = 0
    processed: int = 0
    telemetry: int = 0
    gaps: int = 0
    duplicates: int = 0
    rejected_malformed: int = 0
    rejected_oversized: int = 0
    rejected_topic: int = 0
    dropped_queue_full: int = 0
    batches: int = 0
    write_errors: int = 0
    lost_in_write: int = 0
    commands_published: int = 0


class Bridge:
    """One paho client (MQTT v5) plus the batching writer."""

    def __init__(
        self,
        settings: ControllerSettings,
        db: Database,
        fleet: Fleet | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.fleet = fleet or Fleet()
        self.counters = BridgeCounters()
        self.connected = threading.Event()
        self._queue: collections.deque[tuple[str, bytes]] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._last_prune = time.monotonic()
        self._rate_window: collections.deque[tuple[float, int]] = collections.deque(maxlen=600)
        self.latest_results: dict[str, InferenceResult] = {}
        self.latest_thumbnails: dict[str, InferenceResult] = {}
        m = settings.mqtt
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=m.client_id or f"lepton-controller-{os.getpid()}-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5 if m.protocol == "5" else mqtt.MQTTv311,
        )
        if m.username:
            self.client.username_pw_set(m.username, m.password)
        if m.tls:
            self.client.tls_set(
                ca_certs=str(m.ca_file) if m.ca_file else None, cert_reqs=ssl.CERT_REQUIRED
            )
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(1000)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        m = self.settings.mqtt
        self._writer = threading.Thread(target=self._write_loop, name="bridge-writer", daemon=True)
        self._writer.start()
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        self.client.connect_async(m.host, m.port, keepalive=m.keepalive_s)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self._stop.set()
        self._wake.set()
        if self._writer:
            self._writer.join(timeout=10)
        self._flush()  # whatever arrived last

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self.connected.wait(timeout)

    # --- paho callbacks (network thread: keep them tiny) ----------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        _flags: Any,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.error("broker refused the controller: %s", reason)
            return
        group = self.settings.mqtt.shared_subscription_group
        # Retained births are not delivered on shared subscriptions, and state is small:
        # every controller takes the whole state stream (applying it twice is harmless).
        subs = [(topics.subscription(Kind.STATE), 1)]
        subs += [
            (topics.subscription(k, group), 1)
            for k in SUBSCRIBED_KINDS
            if k not in (Kind.STATE, Kind.RESULT)
        ]
        # Every replica sees every result (QoS 0, not shared): each one's dashboard shows them.
        subs.append((topics.subscription(Kind.RESULT), 0))
        client.subscribe(subs)
        self.connected.set()
        log.info("bridge connected to %s:%s", self.settings.mqtt.host, self.settings.mqtt.port)

    def _on_disconnect(self, *_args: Any) -> None:
        self.connected.clear()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.counters.received += 1
        if len(self._queue) >= self.settings.ingest.queue_max:
            self.counters.dropped_queue_full += 1
            return
        self._queue.append((msg.topic, bytes(msg.payload)))
        if len(self._queue) >= self.settings.ingest.batch_max:
            self._wake.set()

    # --- writer thread ----------------------------------------------------------------------------

    def _write_loop(self) -> None:
        interval = self.settings.ingest.flush_interval_ms / 1000
        while not self._stop.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            try:
                while self._queue:
                    self._flush()
                self._maybe_prune()
            except Exception:  # the bridge must outlive any one bad batch
                self.counters.write_errors += 1
                log.exception("bridge: writing a batch failed")
                time.sleep(interval)

    def decode(self, items: list[tuple[str, bytes]]) -> Batch:
        batch = Batch()
        for topic_name, payload in items:
            try:
                device_id, kind = topics.parse(topic_name)
            except TopicError as exc:
                self.counters.rejected_topic += 1
                log.debug("dropped: %s", exc)
                continue
            if kind not in SUBSCRIBED_KINDS:
                self.counters.rejected_topic += 1
                continue
            if len(payload) > messages.MAX_PAYLOAD_BYTES:
                self.counters.rejected_oversized += 1
                log.warning("dropped %d-byte payload on %s", len(payload), topic_name)
                continue
            try:
                msg = messages.decode_device_message(kind, payload)
            except MessageError as exc:
                self.counters.rejected_malformed += 1
                log.info("dropped malformed %s from %s: %s", kind.value, device_id, exc)
                continue
            if msg.device_id != device_id:
                self.counters.rejected_topic += 1
                log.info("dropped %s: device_id does not match topic %s", kind.value, topic_name)
                continue
            if isinstance(msg, Telemetry):
                batch.telemetry.append((msg, payload.decode()))
            elif isinstance(msg, State):
                batch.states.append(msg)
            elif isinstance(msg, Event):
                batch.events.append(msg)
            elif isinstance(msg, Reply):
                batch.replies.append(msg)
            elif isinstance(msg, InferenceResult):
                self._keep_result(msg)
        return batch

    def _keep_result(self, result: InferenceResult) -> None:
        if result.thumbnail_jpeg is not None:
            self.latest_thumbnails[result.device_id] = result
        self.latest_results[result.device_id] = result

    def latest_result(
        self, device_id: str
    ) -> tuple[InferenceResult | None, InferenceResult | None]:
        """The device's newest result, and the newest one that carried a thumbnail."""
        return self.latest_results.get(device_id), self.latest_thumbnails.get(device_id)

    def _flush(self) -> None:
        items: list[tuple[str, bytes]] = []
        limit = self.settings.ingest.batch_max
        while self._queue and len(items) < limit:
            items.append(self._queue.popleft())
        if not items:
            return
        batch = self.decode(items)
        if len(batch):
            result = self._apply_with_retry(batch)
            if result is None:
                return
            self.counters.telemetry += result.telemetry
            self.counters.gaps += result.gaps
            self.counters.duplicates += result.duplicates
        self.counters.processed += len(items)
        self.counters.batches += 1
        self._rate_window.append((time.monotonic(), self.counters.telemetry))

    def _apply_with_retry(self, batch: Batch, attempts: int = 3) -> IngestResult | None:
        """A database hiccup must not cost a batch: retry; give up (and count it) only after
        `attempts` failures."""
        for attempt in range(1, attempts + 1):
            try:
                with self.db.session() as session:
                    return self.fleet.apply(session, batch)
            except Exception:
                self.fleet.reset()  # its caches ran ahead of what was rolled back
                if attempt == attempts:
                    self.counters.write_errors += 1
                    self.counters.lost_in_write += len(batch)
                    log.exception("bridge: a batch of %d messages could not be written", len(batch))
                    return None
                log.warning("bridge: writing a batch failed (attempt %d); retrying", attempt)
                time.sleep(0.2 * attempt)
        return None

    def _maybe_prune(self) -> None:
        ing = self.settings.ingest
        if time.monotonic() - self._last_prune < ing.prune_interval_s:
            return
        self._last_prune = time.monotonic()
        with self.db.session() as session:
            self.fleet.prune(session, ing.history_per_device, ing.events_per_device)

    def telemetry_rate(self, window_s: float = 60.0) -> float:
        """Telemetry samples per second ingested over the last `window_s`."""
        now = time.monotonic()
        recent = [(t, n) for t, n in self._rate_window if now - t <= window_s]
        if len(recent) < 2:
            return 0.0
        (t0, n0), (t1, n1) = recent[0], recent[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def backlog(self) -> int:
        return len(self._queue)

    # --- commands -------------------------------------------------------------------------------

    def publish_command(self, device_id: str, command: messages.CommandMessage) -> bool:
        """Publish at QoS 1; False if not connected (the caller retries later)."""
        if not self.connected.is_set():
            return False
        info = self.client.publish(
            topics.topic(device_id, Kind.CMD), messages.encode(command), qos=1
        )
        ok = info.rc == mqtt.MQTT_ERR_SUCCESS
        if ok:
            self.counters.commands_published += 1
        return ok
