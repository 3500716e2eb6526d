"""CPU weights, judged by the kernel: two strict workers spinning on ONE cpu share it by their
``cpu-weight``, as the cpuacct counters (v1) or ``cpu.stat`` (v2) of their cgroups say.

A ratio, never a time: a slow or busy machine stretches both workers alike.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.hosts import close_quietly
from helpers.plugins import make_plugin, module_name

from corral import Host
from corral._sandbox.cpuweight import CpuWeights, cpu_cgroup_base, shares_for
from corral._services.sandboxed import sandbox_problem

SPIN = '''
import time


def spin(value, ctx):
    end = time.monotonic() + value
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


def echo(value, ctx):
    return value
'''

_version, _where = cpu_cgroup_base()
needs_weights = pytest.mark.skipif(
    sandbox_problem("strict") is not None or _version is None,
    reason=f"no strict sandbox or no cpu cgroup: {sandbox_problem('strict') or _where}")
CPUACCT = "/sys/fs/cgroup/cpuacct"


def spinner(root: Path, plugin_id: str, weight: int | None) -> Path:
    mod = module_name(plugin_id)
    return make_plugin(root, plugin_id, {f"{mod}.py": SPIN}, isolation="strict",
                       exports={"spin": f"{mod}:spin", "echo": f"{mod}:echo"},
                       sandbox={"timeout-ms": 20000, "cpu-seconds": 60},
                       quotas={"cpu-weight": weight} if weight is not None else None)


def test_shares_follow_the_v2_scale() -> None:
    assert shares_for(100) == 1024
    assert shares_for(400) == 4096
    assert shares_for(1) == 10


class Meter:
    """CPU time of a set of processes, by the kernel's per-cgroup counters."""

    def __init__(self, weights: CpuWeights, tag: str) -> None:
        self.weights = weights
        self.v1_dir: str | None = None
        if weights.version == 1:  # cpuacct is its own hierarchy here: a cgroup of the test's
            self.v1_dir = os.path.join(CPUACCT, f"corral-test-{tag}")
            os.mkdir(self.v1_dir)

    def add(self, pid: int) -> None:
        if self.v1_dir is not None:
            with open(os.path.join(self.v1_dir, "cgroup.procs"), "w") as f:
                f.write(str(pid))

    def ns(self, plugin_id: str) -> int:
        if self.v1_dir is not None:
            return int(Path(self.v1_dir, "cpuacct.usage").read_text())
        path = self.weights.cgroup_of(plugin_id)
        assert path is not None
        for line in Path(path, "cpu.stat").read_text().splitlines():
            if line.startswith("usage_usec "):
                return int(line.split()[1]) * 1000
        raise AssertionError("no usage_usec")

    def close(self) -> None:
        if self.v1_dir is not None:
            for pid in Path(self.v1_dir, "cgroup.procs").read_text().split():
                with open(os.path.join(CPUACCT, "cgroup.procs"), "w") as f:
                    f.write(pid)
            os.rmdir(self.v1_dir)


@pytest.fixture
def host(home: Path, workspace: Path) -> Iterator[Host]:
    h = Host(home=home, workspace=workspace, hook_timeout=5.0)
    yield h
    close_quietly(h)


def _pin_to_one_cpu(pid: int) -> None:
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), {0})


def _share(host: Host, a: str, b: str, seconds: float) -> float:
    """Spin ``a`` and ``b`` at once on cpu 0; the ratio of the CPU time each got."""
    sup = host.attachments.supervisor()
    for pid_ in (a, b):
        host.call(pid_, "echo", 0)  # its worker exists
    weights = sup.cpu_weights
    assert weights is not None
    assert weights.active, weights.why
    weights.settle()  # both are in their weighted cgroups
    tag = uuid.uuid4().hex[:12]
    meters = {p: Meter(weights, f"{tag}-{p}") for p in (a, b)}
    try:
        for p in (a, b):
            pid = sup.worker_pid(p)
            assert pid is not None
            own = Path(f"/proc/{pid}/cgroup").read_text()
            assert f"corral-cpu-{os.getpid()}" in own  # really moved by the host
            _pin_to_one_cpu(pid)
            meters[p].add(pid)
        before = {p: meters[p].ns(p) for p in (a, b)}
        threads = [threading.Thread(target=host.call, args=(p, "spin", seconds)) for p in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        used = {p: meters[p].ns(p) - before[p] for p in (a, b)}
    finally:
        for m in meters.values():
            m.close()
    assert used[b] > 0
    print(f"{a}/{b} CPU time ratio: {used[a] / used[b]:.2f}")
    return used[a] / used[b]


@needs_weights
def test_four_times_the_weight_gets_clearly_more_of_one_cpu(tmp_path: Path, host: Host) -> None:
    for d in (spinner(tmp_path, "acme.heavy", 400), spinner(tmp_path, "acme.light", None)):
        host.enable(host.register(d)[0].id)
    ratio = _share(host, "acme.heavy", "acme.light", 1.5)
    assert ratio > 2, f"heavy/light CPU time = {ratio:.2f}, expected about 4"
    weights = host.attachments.supervisor().cpu_weights
    assert weights is not None
    heavy = weights.cgroup_of("acme.heavy")
    assert heavy is not None
    knob = "cpu.shares" if _version == 1 else "cpu.weight"
    assert Path(heavy, knob).read_text().strip() == ("4096" if _version == 1 else "400")


@needs_weights
def test_equal_weights_share_one_cpu_evenly(tmp_path: Path, host: Host) -> None:
    """The control: the same spinners with the same weight split the cpu about evenly."""
    for d in (spinner(tmp_path, "acme.left", None), spinner(tmp_path, "acme.right", None)):
        host.enable(host.register(d)[0].id)
    ratio = _share(host, "acme.left", "acme.right", 1.0)
    assert 0.5 < ratio < 2, f"left/right CPU time = {ratio:.2f}, expected about 1"
