"""Recommendations and opt-in usage reports.

``recommend`` learns "used together" from co-usage sets and explains every
pick; ``report`` builds the anonymous report a host may send (both pure, no
I/O); ``state`` keeps the home's opt-in switch and the day's nonce.  The
package sits in the tooling layer and imports only the model, disk and error
layers, so the registry server can use it too.
"""
