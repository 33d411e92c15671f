-- EMQX reads device logins and ACLs from the controller's database. Run once as the database
-- owner, after the first controller has created the schema, for a login role made before:
--   psql "$DATABASE_URL" -c "CREATE ROLE emqx_auth LOGIN PASSWORD '...'"
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -v emqx_role=emqx_auth -f emqx-auth.sql
-- tests/deploy/test_scale_out_files.py runs this file on PostgreSQL and checks that a device's
-- password verifies against the view the way EMQX's pbkdf2 check does; EMQX itself is untested.
-- The controller stores each device's password as mosquitto's "$7$101$<salt b64>$<hash b64>"
-- (PBKDF2-HMAC-SHA512, 101 iterations); EMQX's pbkdf2 check wants the hash in hex and the salt
-- as raw bytes.

-- the controllers' own broker login, with the same hash format, e.g. from
-- python -c "from lepton_edge.controller.security import mosquitto_hash; print(mosquitto_hash('PASSWORD'))"
CREATE TABLE IF NOT EXISTS lepton_broker_admins (
  username text PRIMARY KEY,
  password_hash text NOT NULL
);

CREATE OR REPLACE VIEW lepton_mqtt_users AS
SELECT username,
       encode(decode(split_part(password_hash, '$', 5), 'base64'), 'hex') AS password_hash,
       decode(split_part(password_hash, '$', 4), 'base64') AS salt
FROM device_credentials
UNION ALL
SELECT username,
       encode(decode(split_part(password_hash, '$', 5), 'base64'), 'hex'),
       decode(split_part(password_hash, '$', 4), 'base64')
FROM lepton_broker_admins;

CREATE OR REPLACE VIEW lepton_mqtt_acl AS
SELECT username, 'allow' AS permission, 'all' AS action,
       'lepton/v1/dev/' || device_id || '/#' AS topic
FROM device_credentials
UNION ALL
SELECT username, 'allow', 'all', 'lepton/v1/#' FROM lepton_broker_admins
UNION ALL
-- Home Assistant discovery ([homeassistant] discovery = true in controller.toml)
SELECT username, 'allow', 'publish', 'homeassistant/#' FROM lepton_broker_admins;

GRANT SELECT ON lepton_mqtt_users, lepton_mqtt_acl TO :"emqx_role";
