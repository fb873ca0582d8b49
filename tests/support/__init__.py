"""Reusable test support: servers and stand-ins that tests start and stop themselves."""
