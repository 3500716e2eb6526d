"""How a sandboxed call that went wrong becomes one corral error.

A worker's own failure report is believed only as far as the host can check it;
a dead worker's cause (CPU, memory, a signal, an exit status) is read from what
the fork server reaped.
"""

from __future__ import annotations

import signal
from typing import Any, Final

from corral._errors import CorralError, ResourceLimitExceeded, WorkerCrashed
from corral._runtime.budgets import over_budget
from corral._sandbox.denials import Grants, denial_message, split_permission
from corral._sandbox.rpc import ErrorInfo, Reaped
from corral._sandbox.spec import SandboxSpec
from corral._sandbox.workerinit import CPU_BUDGET_FACTOR

__all__ = ["death_details", "death_error", "log_over", "vetted"]

_SIGNAL_NAMES: Final = {int(s): s.name for s in signal.Signals}

#: Limits a worker detects itself and may report.
_WORKER_LIMITS: Final = frozenset({"cpu-seconds", "memory-mb", "output-size", "result-size"})


def vetted(info: ErrorInfo, host_errors: set[tuple[str, str]],
           spec: SandboxSpec | None = None) -> ErrorInfo:
    """A worker's failure report, believed only as far as the host can check it.

    A plugin may fail with its own exception or a limit the worker detects; any
    other corral error (a denial, ``not_found``...) must be one the host itself
    raised into this call, or a plugin could forge a ``permission_denied``.
    A file, socket or program a strict sandbox refused (reported with the
    ``PermissionError`` that escaped, not a ``PermissionDenied`` the plugin
    raised) is believed as a denial when ``spec`` does not grant it either
    (claiming that only says the plugin lacks it); the host words its message.
    """
    if info.code == "plugin_error":
        return info
    if info.code == "resource_limit" and info.limit in _WORKER_LIMITS:
        return info
    if (info.code, info.message) in host_errors:
        return info
    permission = info.permission
    if (info.code == "permission_denied" and spec is not None and permission is not None
            and spec.isolation == "strict" and info.type == "PermissionError"
            and split_permission(permission) is not None
            and not Grants.of_spec(spec).allows(permission)):
        return ErrorInfo(code="permission_denied",
                         message=denial_message(spec.plugin_id, permission),
                         type=info.type, traceback=info.traceback, permission=permission)
    return ErrorInfo(
        code="plugin_error",
        message=f"the plugin raised a corral error of its own ({info.code}): {info.message}",
        type=info.type or info.code,
        traceback=info.traceback,
    )


def death_details(reaped: Reaped | None) -> dict[str, Any]:
    if reaped is None:
        return {}
    if reaped.signal is not None:
        return {"signal": _SIGNAL_NAMES.get(reaped.signal, str(reaped.signal))}
    return {"exit_status": reaped.exit_code}


def death_error(spec: SandboxSpec, reaped: Reaped | None) -> CorralError:
    pid = spec.plugin_id
    details = death_details(reaped)
    if reaped is not None:
        cpu_ms = reaped.cpu_user_ms + reaped.cpu_system_ms
        if reaped.signal in (signal.SIGXCPU, signal.SIGKILL) and (
            cpu_ms >= spec.cpu_seconds * CPU_BUDGET_FACTOR * 1000.0 - 50.0
        ):
            return ResourceLimitExceeded(
                f"{pid}: the worker used up its CPU time",
                plugin_id=pid,
                limit="cpu-seconds",
                measured=round(cpu_ms / 1000.0, 3),
                **details,
            )
        rss_mb = reaped.peak_rss_kb / 1024.0
        if reaped.signal is not None and rss_mb >= 0.9 * spec.memory_mb:
            return ResourceLimitExceeded(
                f"{pid}: the worker ran out of its {spec.memory_mb} MB of memory",
                plugin_id=pid,
                limit="memory-mb",
                measured=round(rss_mb, 1),
                **details,
            )
    how = (
        f"was killed by {details['signal']}"
        if "signal" in details
        else f"exited with status {details.get('exit_status')}"
    )
    return WorkerCrashed(f"the worker of {pid} {how}", plugin_id=pid, **details)


def log_over(spec: SandboxSpec, lines: int, output: int) -> ResourceLimitExceeded:
    """The error for a call that logged past ``log-lines`` or ``log-kb``."""
    if lines > spec.max_log_lines:
        return over_budget(spec.plugin_id, "log-lines", "the call's log", lines,
                           spec.max_log_lines, "lines")
    return over_budget(spec.plugin_id, "log-kb", "the call's log", output, spec.max_log_bytes)

