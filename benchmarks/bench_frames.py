"""What the worker-frame checks cost the warm strict round trip, A/B in one process.

Run: python benchmarks/bench_frames.py [--quick] [--json FILE] [--rounds N] [--blocks B]

The supervisor decodes worker frames through ``decode_worker`` and results through
``decode_result`` (depth, size and type checks).  Here the same warm worker is timed
in alternating blocks with those two swapped for bare msgspec decoders (what ran
before the checks), so machine noise hits both sides alike; the medians and their
ratio are printed, plus the checks' own cost per call on the warm frame.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import msgspec
from harness import Bench, Figure

from corral._sandbox import rpc as _rpc
from corral._sandbox import supervisor as _supervisor
from corral._sandbox import workerproc as _workerproc
from corral._sandbox.spec import SandboxSpec
from corral._sandbox.supervisor import Supervisor

PLUGIN = "def noop(inp, ctx):\n    return inp\n"


def bare_worker(body: bytes | memoryview) -> Any:
    """The decoder as it was: schema only, no depth pre-check."""
    try:
        return _rpc._worker_decoder.decode(body)
    except msgspec.MsgspecError as exc:
        raise _rpc.ProtocolError(f"malformed worker message: {exc}") from None


def bare_result(text: bytes) -> Any:
    try:
        return msgspec.json.decode(text)
    except msgspec.MsgspecError as exc:
        raise _rpc.ProtocolError(f"result is not JSON: {exc}") from None


def main() -> None:
    bench = Bench("bench_frames", __doc__)
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200 if bench.quick else 2000)
    parser.add_argument("--blocks", type=int, default=3 if bench.quick else 10)
    args = parser.parse_args(bench.rest)
    checked = (_workerproc.decode_worker, _supervisor.decode_result)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "code").mkdir()
        (root / "code" / "benchframes.py").write_text(PLUGIN)
        dirs = {}
        for name in ("data", "tmp", "cache"):
            (root / name).mkdir()
            dirs[f"{name}_dir"] = root / name
        spec = SandboxSpec(
            plugin_id="bench.frames", isolation="strict", plugin_dir=root / "code",
            data_dir=dirs["data_dir"], tmp_dir=dirs["tmp_dir"], cache_dir=dirs["cache_dir"],
        )
        payload = {"n": 1, "s": "hello"}
        times: dict[str, list[float]] = {"checked": [], "bare": []}
        with Supervisor() as sup:
            for _ in range(300):
                sup.call(spec, "benchframes:noop", payload)
            for block in range(args.blocks * 2):
                side = "checked" if block % 2 == 0 else "bare"
                if side == "checked":
                    _workerproc.decode_worker, _supervisor.decode_result = checked
                else:
                    _workerproc.decode_worker = bare_worker
                    _supervisor.decode_result = bare_result
                for _ in range(args.rounds):
                    t0 = time.perf_counter()
                    sup.call(spec, "benchframes:noop", payload)
                    times[side].append(time.perf_counter() - t0)
            _workerproc.decode_worker, _supervisor.decode_result = checked
    bench.section(f"warm strict round trip, A/B in alternating blocks ({args.blocks} x "
                  f"{args.rounds} calls each)")
    checked_fig = bench.record(
        Figure("checked decoders", "us", [t * 1e6 for t in times["checked"]]))
    bare_fig = bench.record(
        Figure("bare msgspec decoders", "us", [t * 1e6 for t in times["bare"]]))
    bench.ratio(checked_fig, bare_fig, target="<= 1.03")
    frame = _rpc.encode(
        _rpc.Result(id=7, value=msgspec.json.encode(payload), usage=_rpc.Usage(1.5, 0.5, 40000))
    )[4:]
    view = memoryview(frame)
    value = msgspec.json.encode(payload)
    n = 2_000 if bench.quick else 20_000
    bench.section("decoding the warm Result frame")
    new = bench.time("checked", lambda: (_rpc.decode_worker(view), _rpc.decode_result(value)),
                     inner=n, unit="ns")
    old = bench.time("bare", lambda: (bare_worker(view), bare_result(value)), inner=n, unit="ns")
    bench.ratio(new, old)
    bench.done()


if __name__ == "__main__":
    main()
