"""The scale-out files that can be checked without containers: the controllers' settings load
with the real settings model, the compose file and the load balancer agree on the services,
and emqx-auth.sql, run on the real PostgreSQL, exposes device logins EMQX's pbkdf2 check can
verify. (EMQX, haproxy and the compose run themselves are not tested here.)"""

from __future__ import annotations

import hashlib
import re
import subprocess
import uuid

import pytest
import yaml

from lepton_edge.controller.config import load_settings
from tests.deploy.support import DEPLOY

SCALE_OUT = DEPLOY / "scale-out"


def test_controller_settings_load_and_share_the_load() -> None:
    settings = load_settings(SCALE_OUT / "controller.toml")
    assert settings.mqtt.shared_subscription_group == "controllers"
    assert settings.public_url and "lepton.example.com" in settings.public_url
    assert settings.mqtt.public_host == "lepton.example.com" and settings.mqtt.tls


def test_compose_services_match_the_load_balancer() -> None:
    compose = yaml.safe_load((SCALE_OUT / "compose.yaml").read_text())
    services = compose["services"]
    controllers = [name for name in services if name.startswith("controller")]
    assert len(controllers) >= 2 and {"postgres", "emqx1", "emqx2", "lb"} <= set(services)
    for name in controllers:
        assert services[name]["command"][:2] == ["lepton-controller", "serve"]
        assert "shared-state:/var/lib/lepton-controller" in services[name]["volumes"]
    # a distinct, fixed host name each: the MQTT client id (and its session) outlives a
    # recreated container, and no two controllers share one
    assert len({services[name].get("hostname") for name in controllers} - {None}) == len(
        controllers
    )
    haproxy = (SCALE_OUT / "haproxy.cfg").read_text()
    backends = set(re.findall(r"^\s+server \S+ (\S+):\d+", haproxy, re.MULTILINE))
    assert backends == {"emqx1", "emqx2", *controllers}
    assert "NOT TESTED" in (SCALE_OUT / "compose.yaml").read_text()


@pytest.mark.postgres
def test_emqx_views_verify_device_passwords(postgres_url: str, postgres_admin_url: str) -> None:
    import psycopg

    from lepton_edge.controller.db import Database
    from lepton_edge.controller.security import Scope, create_token, enroll, mosquitto_hash

    db = Database(postgres_url)
    db.migrate()
    with db.session() as session:
        _, token = create_token(session, Scope.ENROLL)
        session.flush()
        device_password = enroll(session, token, "box-1").password
    db.close()

    libpq = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    role = f"emqx_test_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(libpq, autocommit=True)
    admin.execute(f"CREATE ROLE {role} LOGIN")
    try:
        result = subprocess.run(
            [
                "psql",
                libpq,
                "-v",
                "ON_ERROR_STOP=1",
                "-v",
                f"emqx_role={role}",
                "-q",
                "-f",
                str(SCALE_OUT / "emqx-auth.sql"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        admin.execute(
            "INSERT INTO lepton_broker_admins VALUES ('lepton-controller', %s)",
            (mosquitto_hash("controller-secret"),),
        )
        admin.execute(f"SET ROLE {role}")  # what EMQX logs in as may read the views

        def emqx_check(username: str, password: str) -> bool:
            """EMQX's pbkdf2 check: hex(PBKDF2-SHA512(password, salt, 101, 64)) == hash."""
            row = admin.execute(
                "SELECT password_hash, salt FROM lepton_mqtt_users WHERE username = %s",
                (username,),
            ).fetchone()
            if row is None:
                return False
            digest = hashlib.pbkdf2_hmac("sha512", password.encode(), bytes(row[1]), 101, 64)
            return bool(digest.hex() == row[0])

        assert emqx_check("box-1", device_password)
        assert not emqx_check("box-1", device_password + "x")
        assert emqx_check("lepton-controller", "controller-secret")
        assert not emqx_check("nobody", "x")
        acl = admin.execute(
            "SELECT username, permission, action, topic FROM lepton_mqtt_acl "
            "ORDER BY username, topic"
        ).fetchall()
        assert acl == [
            ("box-1", "allow", "all", "lepton/v1/dev/box-1/#"),
            ("lepton-controller", "allow", "publish", "homeassistant/#"),
            ("lepton-controller", "allow", "all", "lepton/v1/#"),
        ]
    finally:
        admin.execute("RESET ROLE")
        dbname = libpq.rsplit("/", 1)[1]
        admin.close()
        with psycopg.connect(postgres_admin_url, autocommit=True) as cleanup:
            cleanup.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            cleanup.execute(f"DROP ROLE IF EXISTS {role}")
