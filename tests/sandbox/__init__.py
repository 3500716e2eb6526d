"""Tests of the sandbox, judged from outside the confined process."""
