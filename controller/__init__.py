"""The fleet side: API, database, MQTT bridge, variant factory, selection, rollouts, dashboard."""
