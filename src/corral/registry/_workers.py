"""The server's worker processes end with ``serve``, even when it is killed with SIGKILL.

uvicorn's supervisor stops its workers when it exits normally; killed outright it
cannot, and the workers would keep the port and the data directory.  Each worker
asks the kernel for a signal when its parent dies (``PR_SET_PDEATHSIG``, Linux)
and checks that the parent it was started by is still there.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Final

__all__ = ["PARENT_ENV", "die_with_parent"]

#: The pid of ``serve``, handed to its workers through their environment.
PARENT_ENV: Final = "CORRAL_REGISTRY_PARENT"
_PR_SET_PDEATHSIG: Final = 1


def die_with_parent() -> bool:
    """Have SIGTERM sent to this process when ``serve`` dies; ``False`` where unsupported.

    If ``serve`` already died before the request was made (the worker was re-parented),
    the worker stops at once.
    """
    if sys.platform != "linux":
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return False
    parent = os.environ.get(PARENT_ENV, "")
    if parent.isdigit() and not _descends(os.getppid(), int(parent)):
        os.kill(os.getpid(), signal.SIGTERM)  # serve died before the request was made
    return True


def _descends(pid: int, ancestor: int) -> bool:
    """Whether ``pid`` is ``ancestor`` or below it (parents read from ``/proc``)."""
    seen = 0
    while pid > 1 and seen < 64:
        if pid == ancestor:
            return True
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            return False
        pid = int(stat.rsplit(b")", 1)[1].split()[1])
        seen += 1
    return False
