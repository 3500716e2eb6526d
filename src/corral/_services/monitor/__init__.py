"""Monitoring sessions, profiles, flame graphs, statistics and suggestions from measured calls."""
