"""Tests of corral._services.hub: events, state, secrets, config, micro-plugins."""
