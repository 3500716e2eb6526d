"""Micro-plugins: kinds and the manager, hot swap, composition, A/B tests and rollouts."""
