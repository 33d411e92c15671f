"""The MQTT link: topics and bytes only (paho-mqtt 2.x, MQTT 5 or 3.1.1).

One thread owns the connection. It connects with a persistent session (client id = device id),
publishes the retained birth after every connect with a retained `offline` will, and drains the
outbox in order with a bounded window of unacknowledged QoS 1 messages; a row leaves the outbox
only on its PUBACK. After a lost connection it reconnects with exponential backoff and jitter
and resends every unacknowledged row, oldest first.
"""

from __future__ import annotations

import collections
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from lepton_edge.agent.config import MqttSettings
from lepton_edge.agent.outbox import Outbox
from lepton_edge.shared.topics import Kind, topic

log = logging.getLogger(__name__)

#: QoS 0 messages held for the link thread at most (about 3 s of results at 30/s).
LIVE_QUEUE = 100


class MqttLink:
    """Connection, birth/will, outbox draining and command delivery for one device.

    `birth()` and `offline()` return the payloads for the retained state topic; they are called
    at each connect (and stop) so they carry fresh content. `on_command(payload)` runs on the
    link thread and must return quickly.
    """

    def __init__(
        self,
        device_id: str,
        settings: MqttSettings,
        outbox: Outbox,
        *,
        birth: Callable[[], bytes],
        offline: Callable[[], bytes],
        on_command: Callable[[bytes], None],
        on_connected: Callable[[], None] | None = None,
    ) -> None:
        self.device_id = device_id
        self.settings = settings
        self.outbox = outbox
        self._birth = birth
        self._offline = offline
        self._on_command = on_command
        self._on_connected = on_connected
        self.state_topic = topic(device_id, Kind.STATE)
        self.cmd_topic = topic(device_id, Kind.CMD)
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._flush_deadline = 0.0
        self._thread: threading.Thread | None = None
        self._session_up = False
        self._inflight: dict[int, int] = {}  # paho mid -> outbox row id
        self._acked: list[int] = []
        self._cursor = 0  # highest outbox id handed to paho on this connection
        self._state_dirty = False
        self._state_mid: int | None = None
        self.last_error: str | None = None
        # QoS 0 messages (results) waiting for the link thread: newest kept, oldest dropped
        self._live: collections.deque[tuple[str, bytes]] = collections.deque(maxlen=LIVE_QUEUE)
        #: figures for benches and `lepton-agent probe`
        self.connects = 0
        self.published = 0
        self.live_dropped = 0

    # -- public ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"mqtt-{self.device_id}", daemon=True
        )
        self._thread.start()

    def stop(self, flush_timeout: float = 5.0) -> None:
        """Drain the outbox for up to `flush_timeout` s, publish `offline`, disconnect cleanly."""
        self._flush_deadline = time.monotonic() + flush_timeout
        self._stop.set()
        if self._thread is not None:
            self._thread.join(flush_timeout + 10)
            self._thread = None

    def publish_live(self, kind: Kind, payload: bytes) -> bool:
        """Queue a QoS 0 message for the link thread (from any thread); False while offline,
        when it is not kept: a stream such as results is worth nothing late."""
        if not self.connected.is_set():
            return False
        if len(self._live) == self._live.maxlen:
            self.live_dropped += 1
        self._live.append((topic(self.device_id, kind), payload))
        return True

    def republish_state(self) -> None:
        """Publish a fresh birth (e.g. a new active bundle) on the link thread."""
        self._state_dirty = True

    # -- the connection thread -----------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        v5 = s.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.device_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False,
        )
        client.max_inflight_messages_set(s.inflight_window + 2)
        client.max_queued_messages_set(0)
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.tls:
            client.tls_set(
                ca_certs=str(s.ca_file) if s.ca_file else None,
                certfile=str(s.cert_file) if s.cert_file else None,
                keyfile=str(s.key_file) if s.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        client.will_set(self.state_topic, self._offline(), qos=1, retain=True)
        client.on_connect = self._handle_connect
        client.on_message = self._handle_message
        client.on_publish = self._handle_publish
        client.on_disconnect = self._handle_disconnect
        return client

    def _connect(self, client: mqtt.Client) -> None:
        s = self.settings
        if s.protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = s.session_expiry_s
            client.connect(s.host, s.port, s.keepalive_s, clean_start=False, properties=props)
        else:
            client.connect(s.host, s.port, s.keepalive_s)

    def _run(self) -> None:
        delay = self.settings.reconnect_min_s
        while not self._stop.is_set():
            client = self._make_client()
            try:
                self._connect(client)
            except (OSError, ssl.SSLError, ValueError) as exc:
                self._note_error(
                    f"cannot connect to {self.settings.host}:{self.settings.port}: {exc}"
                )
            else:
                if self._serve(client):
                    delay = self.settings.reconnect_min_s  # it worked: start over small
            self._session_up = False
            self.connected.clear()
            if self._stop.is_set():
                break
            # Equal jitter: half fixed, half random, so a fleet does not reconnect in lockstep.
            self._stop.wait(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, self.settings.reconnect_max_s)

    def _serve(self, client: mqtt.Client) -> bool:
        """Run one connection until it drops or we stop; True if it got as far as CONNACK."""
        self._inflight.clear()
        self._acked.clear()
        self._cursor = 0
        connack_deadline = time.monotonic() + max(10.0, self.settings.keepalive_s)
        was_up = False
        while True:
            rc = client.loop(timeout=0.1)
            self._commit_acks()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                if self._session_up:
                    self._note_error(f"connection lost: {mqtt.error_string(rc)}")
                break
            if self._session_up:
                was_up = True
                if self._state_dirty:
                    self._publish_birth(client)
                self._pump(client)
                self._pump_live(client)
            elif time.monotonic() > connack_deadline:
                self._note_error("no CONNACK from the broker")
                client.disconnect()
                break
            if self._stop.is_set():
                if self._session_up:
                    self._close_cleanly(client)
                else:
                    client.disconnect()
                break
        return was_up

    def _close_cleanly(self, client: mqtt.Client) -> None:
        while len(self.outbox) and time.monotonic() < self._flush_deadline:
            if client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
            self._commit_acks()
            self._pump(client)
        info = client.publish(self.state_topic, self._offline(), qos=1, retain=True)
        self._state_mid = info.mid
        deadline = max(self._flush_deadline, time.monotonic() + 1.0)
        while self._state_mid is not None and time.monotonic() < deadline:
            if client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
        self._commit_acks()
        client.disconnect()  # a normal DISCONNECT: the broker drops the will
        for _ in range(5):
            if client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break

    def _pump(self, client: mqtt.Client) -> None:
        room = self.settings.inflight_window - len(self._inflight)
        if room <= 0 or self.outbox.last_id <= self._cursor:
            return
        for row in self.outbox.peek(self._cursor, room):
            info = client.publish(topic(self.device_id, Kind(row.kind)), row.payload, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return  # connection gone; the row stays and is resent after reconnect
            self._inflight[info.mid] = row.id
            self._cursor = row.id
            self.published += 1

    def _pump_live(self, client: mqtt.Client) -> None:
        while self._live:
            name, payload = self._live.popleft()
            client.publish(name, payload, qos=0)

    def _commit_acks(self) -> None:
        if self._acked:
            self.outbox.ack(self._acked)
            self._acked.clear()

    def _publish_birth(self, client: mqtt.Client) -> None:
        self._state_dirty = False
        client.publish(self.state_topic, self._birth(), qos=1, retain=True)

    def _note_error(self, message: str) -> None:
        if message != self.last_error:
            log.warning("%s: %s", self.device_id, message)
        self.last_error = message

    # -- paho callbacks (run on this thread, inside client.loop) --------------------------

    def _handle_connect(
        self, client: mqtt.Client, _userdata: Any, flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            self._note_error(f"broker refused the connection: {reason}")
            return
        self._session_up = True
        self.connects += 1
        self.last_error = None
        log.info(
            "%s connected to %s:%d (session present: %s)",
            self.device_id,
            self.settings.host,
            self.settings.port,
            flags.session_present,
        )
        client.subscribe(self.cmd_topic, qos=1)
        self._publish_birth(client)
        self.connected.set()
        if self._on_connected:
            self._on_connected()

    def _handle_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.cmd_topic:
            try:
                self._on_command(bytes(msg.payload))
            except Exception:
                log.exception("command handler failed")

    def _handle_publish(
        self, _client: mqtt.Client, _userdata: Any, mid: int, reason: Any, _props: Any
    ) -> None:
        if mid == self._state_mid:
            self._state_mid = None
        row = self._inflight.pop(mid, None)
        if row is None:
            return
        if reason.is_failure:
            # The broker will never take it (e.g. not authorised): drop it rather than block.
            log.warning("broker rejected outbox message %d: %s", row, reason)
        self._acked.append(row)

    def _handle_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if self._session_up and not self._stop.is_set():
            self._note_error(f"disconnected: {reason}")
        self._session_up = False
        self.connected.clear()
