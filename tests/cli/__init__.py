"""Tests of the corral command line as a user runs it."""
