"""Tests of corral._pdk: validate, lint, new, pack, docs and corral.testing."""
