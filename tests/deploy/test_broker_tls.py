"""The secured broker end to end: certificates from make-certs.sh, mosquitto started with
deploy/broker/lepton.conf, password file and ACL from the controller, and the real agent
connecting over TLS with the CA pinned."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from lepton_edge.agent.cli.enroll import dump_toml
from lepton_edge.shared import topics
from lepton_edge.shared.messages import State, Telemetry, decode
from lepton_edge.shared.topics import Kind
from tests.deploy.support import DEPLOY, REPO
from tests.mosquitto import Mosquitto, free_port

MAKE_CERTS = DEPLOY / "broker/make-certs.sh"
CONTROLLER_USER = "lepton-controller"


def make_certs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MAKE_CERTS), *args], capture_output=True, text=True, timeout=60, check=False
    )


@dataclass
class SecuredBroker:
    broker: Mosquitto
    certs: Path
    controller_password: str
    devices: dict[str, str]  # device id -> broker password


def broker_files(out: Path, device_ids: list[str]) -> tuple[str, dict[str, str]]:
    """Enroll devices in a real controller database, then write the broker files from it with
    the command lepton-broker-sync.service runs (`lepton-controller broker-config`)."""
    from lepton_edge.controller.db import Database
    from lepton_edge.controller.security import Scope, create_token, enroll

    db = Database(f"sqlite:///{out / 'controller.db'}")
    db.migrate()
    passwords = {}
    with db.session() as session:
        for device_id in device_ids:
            _, token = create_token(session, Scope.ENROLL, name=device_id)
            session.flush()
            passwords[device_id] = enroll(session, token, device_id).password
    db.close()
    controller_password = "controller-secret"
    env = {
        **os.environ,
        "LEPTON_CONTROLLER_DATABASE_URL": f"sqlite:///{out / 'controller.db'}",
        "LEPTON_CONTROLLER_MQTT__USERNAME": CONTROLLER_USER,
        "LEPTON_CONTROLLER_MQTT__PASSWORD": controller_password,
    }
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lepton-controller"), "broker-config", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
        cwd=out,
    )
    assert result.returncode == 0, result.stderr
    return controller_password, passwords


def broker_config(files: Path, port: int, *, mutual_tls: bool = False) -> str:
    """deploy/broker/lepton.conf with its paths pointed at `files` and a free port."""
    text = (DEPLOY / "broker/lepton.conf").read_text()
    settings = [line for line in text.splitlines() if not line.startswith("#")]
    assert sum("/etc/mosquitto/lepton/" in line for line in settings) == 5
    assert "listener 8883" in settings
    text = text.replace("/etc/mosquitto/lepton/", f"{files}/")
    text = text.replace("\nlistener 8883\n", f"\nlistener {port} 127.0.0.1\n")
    if mutual_tls:
        text = text.replace("#require_certificate true", "require_certificate true")
        text = text.replace("#use_identity_as_username true", "use_identity_as_username true")
    if os.geteuid() == 0:
        # Root's pytest temp dir is private (0700): mosquitto must not drop to its own user
        # to read the key there. On a real broker the key belongs to user mosquitto instead.
        text += "\nuser root\n"
    return text


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    out = tmp_path / "certs"
    for args in (("ca", str(out)), ("server", str(out), "localhost")):
        result = make_certs(*args)
        assert result.returncode == 0, result.stderr
    return out


@pytest.fixture
def secured_broker(
    certs: Path, mosquitto_factory: Callable[..., Mosquitto]
) -> Iterator[SecuredBroker]:
    controller_password, devices = broker_files(certs, ["dev-a", "dev-b"])
    port = free_port()
    broker = mosquitto_factory(broker_config(certs, port), port=port)
    yield SecuredBroker(broker, certs, controller_password, devices)


def tls_client(ca: Path, username: str | None, password: str | None, **tls: Any) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED, **tls)
    if username is not None:
        client.username_pw_set(username, password)
    return client


def connect(client: mqtt.Client, port: int, timeout: float = 10.0) -> Any:
    """Connect and wait for the CONNACK; return its reason code."""
    result: list[Any] = []
    done = threading.Event()

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        result.append(reason)
        done.set()

    client.on_connect = on_connect
    client.connect("localhost", port)
    client.loop_start()
    done.wait(timeout)
    return result[0] if result else None


class Recorder:
    """A controller-side subscriber collecting (topic, payload) pairs."""

    def __init__(self, broker: SecuredBroker, pattern: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.client = tls_client(
            broker.certs / "ca.pem", CONTROLLER_USER, broker.controller_password
        )
        subscribed = threading.Event()
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, m.payload))
        self.client.on_subscribe = lambda *_a: subscribed.set()
        reason = connect(self.client, broker.broker.port)
        assert reason is not None and not reason.is_failure, reason
        self.client.subscribe(pattern, qos=1)
        assert subscribed.wait(10)

    def wait_for(self, predicate: Callable[[str, bytes], bool], timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(predicate(t, p) for t, p in list(self.messages)):
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# --- make-certs.sh ----------------------------------------------------------------------------


def test_make_certs_chain_verifies(certs: Path) -> None:
    assert make_certs("device", str(certs), "dev-a").returncode == 0
    result = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(certs / "ca.pem"),
            str(certs / "server.pem"),
            str(certs / "devices/dev-a.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    text = subprocess.run(
        ["openssl", "x509", "-in", str(certs / "server.pem"), "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "DNS:localhost" in text and "IP Address:127.0.0.1" in text
    assert "TLS Web Server Authentication" in text
    for key in ("ca.key", "server.key", "devices/dev-a.key"):
        assert (certs / key).stat().st_mode & 0o077 == 0, key


def test_make_certs_keeps_the_ca_and_refuses_bad_input(certs: Path, tmp_path: Path) -> None:
    before = (certs / "ca.pem").read_bytes()
    again = make_certs("ca", str(certs))
    assert again.returncode == 0 and "kept" in again.stdout
    assert (certs / "ca.pem").read_bytes() == before
    bad_id = make_certs("device", str(certs), "a/b")
    assert bad_id.returncode == 2 and "invalid device id" in bad_id.stderr
    assert len(bad_id.stderr.strip().splitlines()) == 1
    no_ca = make_certs("server", str(tmp_path / "empty"), "host")
    assert no_ca.returncode == 2 and "make-certs.sh ca" in no_ca.stderr
    assert make_certs("bogus", "x").returncode == 2


# --- the broker ---------------------------------------------------------------------------------


def test_clients_need_the_pinned_ca_and_a_password(
    secured_broker: SecuredBroker, tmp_path: Path
) -> None:
    port = secured_broker.broker.port
    good = tls_client(secured_broker.certs / "ca.pem", "dev-a", secured_broker.devices["dev-a"])
    reason = connect(good, port)
    assert reason is not None and not reason.is_failure
    good.loop_stop()
    good.disconnect()

    wrong_password = tls_client(secured_broker.certs / "ca.pem", "dev-a", "not-the-password")
    reason = connect(wrong_password, port)
    wrong_password.loop_stop()
    assert reason is not None and reason.is_failure

    anonymous = tls_client(secured_broker.certs / "ca.pem", None, None)
    reason = connect(anonymous, port)
    anonymous.loop_stop()
    assert reason is not None and reason.is_failure

    other = tmp_path / "other-ca"
    assert make_certs("ca", str(other)).returncode == 0
    impostor_ca = tls_client(other / "ca.pem", "dev-a", secured_broker.devices["dev-a"])
    with pytest.raises(ssl.SSLCertVerificationError):
        impostor_ca.connect("localhost", port)

    cleartext = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    cleartext.username_pw_set("dev-a", secured_broker.devices["dev-a"])
    reason = connect(cleartext, port, timeout=3)
    cleartext.loop_stop()
    assert reason is None  # never accepted in the clear


def test_acl_confines_each_device_to_its_subtree(secured_broker: SecuredBroker) -> None:
    recorder = Recorder(secured_broker, f"{topics.ROOT}/#")
    device = tls_client(secured_broker.certs / "ca.pem", "dev-a", secured_broker.devices["dev-a"])
    try:
        assert not connect(device, secured_broker.broker.port).is_failure
        device.publish(topics.topic("dev-b", Kind.TELEMETRY), b"forged", qos=1).wait_for_publish(5)
        device.publish("lepton/v1/other", b"outside", qos=1).wait_for_publish(5)
        device.publish(topics.topic("dev-a", Kind.TELEMETRY), b"mine", qos=1).wait_for_publish(5)
        assert recorder.wait_for(lambda t, p: p == b"mine")
        time.sleep(0.3)
        assert [p for _, p in recorder.messages] == [b"mine"]
    finally:
        device.loop_stop()
        device.disconnect()
        recorder.close()


def test_mutual_tls_with_a_device_certificate(
    certs: Path, mosquitto_factory: Callable[..., Mosquitto]
) -> None:
    broker_files(certs, ["dev-a"])
    assert make_certs("device", str(certs), "dev-a").returncode == 0
    port = free_port()
    mosquitto_factory(broker_config(certs, port, mutual_tls=True), port=port)
    with_cert = tls_client(
        certs / "ca.pem",
        None,
        None,
        certfile=str(certs / "devices/dev-a.pem"),
        keyfile=str(certs / "devices/dev-a.key"),
    )
    try:
        reason = connect(with_cert, port)
        assert reason is not None and not reason.is_failure
    finally:
        with_cert.loop_stop()
        with_cert.disconnect()
    without_cert = tls_client(certs / "ca.pem", "dev-a", "irrelevant")
    try:
        reason = connect(without_cert, port, timeout=3)
    except (ssl.SSLError, OSError):  # TLS 1.2 refuses in the handshake, 1.3 right after it
        reason = None
    finally:
        without_cert.loop_stop()
    assert reason is None or reason.is_failure


# --- the agent ----------------------------------------------------------------------------------


def test_agent_service_connects_over_tls_with_the_pinned_ca(
    secured_broker: SecuredBroker, tmp_path: Path
) -> None:
    """`lepton-agent run` as systemd runs it (Type=notify): READY=1 after the TLS connect,
    then its birth and telemetry reach the controller through the ACL."""
    config = tmp_path / "agent.toml"
    config.write_text(
        dump_toml(
            {
                "device_id": "dev-a",
                "state_dir": str(tmp_path / "state"),
                "telemetry_interval_s": 0.5,
                "mqtt": {
                    "host": "localhost",
                    "port": secured_broker.broker.port,
                    "username": "dev-a",
                    "password": secured_broker.devices["dev-a"],
                    "tls": True,
                    "ca_file": str(secured_broker.certs / "ca.pem"),
                },
            }
        )
    )
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(30)
    recorder = Recorder(secured_broker, topics.subscription(Kind.STATE).replace("+", "dev-a"))
    recorder.client.subscribe(topics.topic("dev-a", Kind.TELEMETRY), qos=1)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "2000000"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "lepton-agent"), "run", "--config", str(config)],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        messages = [notify.recv(4096).decode()]
        while not messages[-1].startswith("READY=1"):  # watchdog pings may come first
            messages.append(notify.recv(4096).decode())
        assert "connected to localhost" in messages[-1]
        assert notify.recv(4096).decode() == "WATCHDOG=1"  # and keep coming after READY

        def online(topic: str, payload: bytes) -> bool:
            if topics.parse(topic)[1] != Kind.STATE:
                return False
            state = decode(Kind.STATE, payload)
            return isinstance(state, State) and state.status == "online"

        assert recorder.wait_for(online)
        assert recorder.wait_for(
            lambda t, p: (
                t.endswith("/telemetry") and isinstance(decode(Kind.TELEMETRY, p), Telemetry)
            )
        )
    finally:
        proc.terminate()
        try:
            _, stderr = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
        recorder.close()
        notify.close()
    assert proc.returncode == 0, stderr[-3000:]


def test_agent_refuses_a_broker_signed_by_another_ca(
    secured_broker: SecuredBroker, tmp_path: Path
) -> None:
    """A pinned CA that did not sign the broker's certificate: the agent never connects."""
    from lepton_edge.agent.config import load_settings
    from lepton_edge.agent.service import Agent

    other = tmp_path / "other-ca"
    assert make_certs("ca", str(other)).returncode == 0
    config = tmp_path / "agent.toml"
    config.write_text(
        dump_toml(
            {
                "device_id": "dev-a",
                "state_dir": str(tmp_path / "state"),
                "mqtt": {
                    "host": "localhost",
                    "port": secured_broker.broker.port,
                    "username": "dev-a",
                    "password": secured_broker.devices["dev-a"],
                    "tls": True,
                    "ca_file": str(other / "ca.pem"),
                    "reconnect_max_s": 0.5,
                },
            }
        )
    )
    agent = Agent(load_settings(config))
    agent.start()
    try:
        assert not agent.wait_ready(timeout=3)
        assert "CERTIFICATE_VERIFY_FAILED" in (agent.link.last_error or "")
    finally:
        agent.stop()
