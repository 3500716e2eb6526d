"""Tests of the host and corral._runtime: registration, persistence, discovery."""
