"""Talking to gateways over MQTT: push an adapter, revoke a version."""
