"""The device side: probes, MQTT link, artifact store, runtimes, engine, power policy."""
