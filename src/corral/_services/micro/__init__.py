"""Micro-plugins: the manager, hot swap, composition, A/B tests and rollouts."""
