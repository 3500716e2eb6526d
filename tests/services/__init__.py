"""Tests of corral._services: events, state, secrets, config, micro-plugins."""
