"""The parts of ``ctx.cache`` shared by the host and its sandboxed workers.

Bounds and encoding of keys and values (``values``), the in-memory level L1
(``memory``), its frequency-based admission (``policy``) and single-flight
computation (``flight``).  The host's shared level L2 lives in ``corral._services.cache``.
"""
