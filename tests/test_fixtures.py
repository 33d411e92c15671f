"""The real-parts fixtures work: a private mosquitto (v5 and 3.1.1) and a private PostgreSQL db."""

import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311])
def test_mosquitto_fixture_delivers_retained_messages(mosquitto, protocol) -> None:  # type: ignore[no-untyped-def]
    assert mosquitto.port != 1883
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()
    pub.publish("t/x", b"hello", qos=1, retain=True).wait_for_publish(5)
    pub.loop_stop()
    pub.disconnect()

    got = threading.Event()
    received: list[bytes] = []

    def on_message(client, userdata, msg) -> None:  # type: ignore[no-untyped-def]
        received.append(msg.payload)
        got.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
    sub.on_message = on_message
    sub.on_connect = lambda c, *a: c.subscribe("t/#", qos=1)
    sub.connect(mosquitto.host, mosquitto.port)
    sub.loop_start()
    assert got.wait(5)
    sub.loop_stop()
    assert received == [b"hello"]


def test_mosquitto_restarts_on_the_same_port(mosquitto) -> None:  # type: ignore[no-untyped-def]
    port = mosquitto.port
    mosquitto.restart()
    assert mosquitto.port == port and mosquitto.proc.poll() is None


def test_postgres_fixture_gives_an_empty_private_database(postgres_url: str) -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    engine = sqlalchemy.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE t (x int)"))
        conn.execute(sqlalchemy.text("INSERT INTO t VALUES (42)"))
        assert conn.execute(sqlalchemy.text("SELECT x FROM t")).scalar() == 42
    engine.dispose()


def test_throwaway_postgres_cluster_starts_serves_and_is_removed() -> None:
    """The cluster `make test` provisions where no server answers (a fresh Debian box)."""
    import psycopg

    from tests.postgres import Postgres

    with Postgres() as server:
        assert server.port != 5432
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE scratch")
            assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
        root = server.root
    assert not root.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(server.url, connect_timeout=2)
