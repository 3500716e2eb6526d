"""``ctx.cache``: the host's side of multi-level caching.

L2 on disk in the home (``store``), the host-wide service over it with per-plugin
L1s, grants, budgets, generations and single flight (``service``), the in-process
``ctx.cache`` (``plugin``), declarative memoisation of exports (``memo``) and the
statistics and clearing that commands read (``stats``).  L1 and the admission
policy are shared with sandboxed workers from ``corral._runtime.cache``.
"""
