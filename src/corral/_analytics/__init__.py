"""Recommendations and opt-in usage reports: pure algorithms, no I/O.

``recommend`` learns "used together" from co-usage sets and explains every
pick; ``report`` builds the anonymous report a host may send.  Both sit in the
tooling layer and import only the model, disk and error layers, so the
registry server can use them too.
"""
