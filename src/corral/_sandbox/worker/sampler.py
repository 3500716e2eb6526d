"""A sampling profiler: a thread that reads other threads' Python stacks every few milliseconds.

It runs in a worker (the call thread) and in the host (threads running an in-process
plugin). Time goes to the plugin's own functions, to the host services it waits on
(``[broker] state.get`` in a worker, ``[host] ...`` in process) and, when the thread
was off the CPU at a call the interpreter cannot see into, to ``[io] NAME``.
"""

from __future__ import annotations

import contextlib
import dis
import linecache
import os
import sys
import threading
import time
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Final, final

__all__ = ["Frame", "Sampler"]

#: ``(name, file, line)``: a function (its first line), or a label with ``("", 0)``.
Frame = tuple[str, str, int]

_CORRAL: Final = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: A thread that got less CPU than this share of the wall time between samples was blocked
#: (one only starved of a CPU by a busy machine still gets more).
_WAITING_SHARE: Final = 0.1
_MAX_STACKS: Final = 20_000
_MAX_DEPTH: Final = 256
_STACK_BYTES: Final = 512 * 1024
#: The opcodes a frame is at while it waits inside something it called.
_CALLS: Final = frozenset(op for name, op in dis.opmap.items() if "CALL" in name)


def _callee(frame: FrameType, cache: dict[tuple[CodeType, int], str]) -> str:
    """The name a frame is calling (``read`` of ``f.read(n)``), read from its source position."""
    code, lasti = frame.f_code, frame.f_lasti
    name = cache.get((code, lasti))
    if name is None:
        name = ""
        with contextlib.suppress(Exception):  # no source, no positions: just "wait"
            if code.co_code[lasti] not in _CALLS:
                cache[(code, lasti)] = name  # not at a call: it was runnable, not waiting
                return name
            name = "wait"
            line, end, col, end_col = list(code.co_positions())[lasti // 2]
            if line is not None and line == end and col is not None:
                text = linecache.getline(code.co_filename, line)[col:end_col]
                head = text.split("(", 1)[0].strip().rsplit(".", 1)[-1]
                if head.isidentifier():
                    name = head[:80]
        cache[(code, lasti)] = name
    return name


@final
class Sampler:
    """Samples stacks that run plugin code (files under ``plugin_dir``) until :meth:`stop`.

    :param thread_id: sample this thread only (a worker's call thread), else every
        thread but the sampler's own.
    :param broker_op: the broker request in flight, if any (a worker's channel knows it).
    """

    def __init__(self, plugin_dir: str, *, thread_id: int | None = None,
                 interval: float = 0.005,
                 broker_op: Callable[[], str | None] | None = None) -> None:
        self._prefix = os.path.join(os.path.abspath(plugin_dir), "")
        self._thread_id = thread_id
        self.interval = interval
        self._broker_op = broker_op
        self._keys: dict[object, int] = {}
        self.frames: list[Frame] = []
        self.stacks: dict[tuple[int, ...], float] = {}
        self._callees: dict[tuple[CodeType, int], str] = {}
        self._clocks: dict[int, tuple[float, float]] = {}
        self._active = threading.Event()
        self._closed = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._switch = 0.005
        #: How many samples were taken (stacks without plugin code are not kept).
        self.samples = 0

    def start(self) -> bool:
        """Start sampling; ``False`` when no thread could be started (a process limit)."""
        thread = threading.Thread(target=self._run, name="corral-sampler", daemon=True)
        # A small stack: a worker's memory-mb is its address space, which stacks count in.
        old = threading.stack_size(_STACK_BYTES)
        try:
            thread.start()
        except RuntimeError:
            return False
        finally:
            threading.stack_size(old)
        self._thread = thread
        self.resume()
        return True

    def resume(self) -> None:
        """Sample (again) from now on, into an empty profile."""
        # A thread that keeps the CPU hands the interpreter over only every switch
        # interval (5 ms): no longer than a sampling interval while sampling.
        self._switch = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch, self.interval))
        self._active.set()

    def pause(self) -> tuple[list[Frame], list[tuple[list[int], float]], int]:
        """Stop sampling, keep the thread parked, and hand over what was sampled since
        :meth:`resume`: the frames, ``(stack root first, ms)`` and how many samples."""
        with self._lock:  # a sample in progress finishes first; none starts after
            if self._active.is_set():
                self._active.clear()
                sys.setswitchinterval(self._switch)
            out = (self.frames, [(list(k), round(v, 3)) for k, v in self.stacks.items()],
                   self.samples)
            self._keys, self.frames, self.stacks, self._clocks = {}, [], {}, {}
            self.samples = 0
        return out

    def stop(self) -> tuple[list[Frame], list[tuple[list[int], float]], int]:
        """Stop sampling and the thread; what was sampled, as :meth:`pause` returns it."""
        out = self.pause()
        self._closed = True
        self._active.set()  # let a parked thread see it is closed
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        return out

    def _run(self) -> None:
        me = threading.get_ident()
        active = self._active
        while True:
            active.wait()  # parked between calls
            if self._closed:
                return
            time.sleep(self.interval)
            with self._lock:
                if self._closed or not active.is_set():
                    continue
                now = time.perf_counter()
                frames = sys._current_frames()
                if self._thread_id is not None:
                    frame = frames.get(self._thread_id)
                    if frame is not None:
                        self._sample(self._thread_id, frame, now)
                    continue
                for tid, frame in frames.items():
                    if tid != me:
                        self._sample(tid, frame, now)

    def _sample(self, tid: int, frame: FrameType, now: float) -> None:
        try:
            cpu = time.clock_gettime(time.pthread_getcpuclockid(tid))
        except (OSError, AttributeError):
            cpu = None
        last = self._clocks.get(tid)
        wall = self.interval if last is None else now - last[0]
        waiting = cpu is not None and last is not None and (cpu - last[1]) < _WAITING_SHARE * wall
        self._clocks[tid] = (now, cpu if cpu is not None else 0.0)
        stack = self._stack(frame, waiting)
        if stack is None:
            return
        self.samples += 1
        stacks = self.stacks
        if stack in stacks:
            stacks[stack] += wall * 1000.0
        elif len(stacks) < _MAX_STACKS:
            stacks[stack] = wall * 1000.0

    def _stack(self, leaf: FrameType, waiting: bool) -> tuple[int, ...] | None:
        chain: list[FrameType] = []
        f: FrameType | None = leaf
        while f is not None and len(chain) < _MAX_DEPTH:
            chain.append(f)
            f = f.f_back
        prefix = self._prefix
        root = -1
        for i in range(len(chain) - 1, -1, -1):  # the outermost frame of plugin code
            if chain[i].f_code.co_filename.startswith(prefix):
                root = i
                break
        if root < 0:
            return None
        out: list[int] = []
        for i in range(root, -1, -1):
            code = chain[i].f_code
            if code.co_filename.startswith(_CORRAL):  # a host service: what it waits on
                op = self._broker_op() if self._broker_op is not None else None
                out.append(self._label(f"[broker] {op}" if op else f"[host] {code.co_qualname}"))
                return tuple(out)
            out.append(self._code(code))
        if waiting:
            callee = _callee(leaf, self._callees)
            if callee:
                out.append(self._label(f"[io] {callee}"))
        return tuple(out)

    def _code(self, code: CodeType) -> int:
        index = self._keys.get(code)
        if index is None:
            path = code.co_filename
            if path.startswith(self._prefix):
                path = path[len(self._prefix):]
            else:
                path = os.path.join(*path.split(os.sep)[-2:]) if os.sep in path else path
            index = self._keys[code] = len(self.frames)
            self.frames.append((code.co_qualname, path, code.co_firstlineno))
        return index

    def _label(self, label: str) -> int:
        index = self._keys.get(label)
        if index is None:
            index = self._keys[label] = len(self.frames)
            self.frames.append((label, "", 0))
        return index
