"""What showing plugin text safely costs: ``neutralise`` per string, and a redacted stdout.

Prints nanoseconds per call for typical strings (printable ASCII, unicode with
newlines, hostile) and the same-run ratio of writing a 200-line table through
the CLI's :class:`SafeStream` (with a redactor holding three secrets) to writing
it raw.

    python benchmarks/bench_neutralise.py [--quick] [--json FILE]
"""

from __future__ import annotations

import functools
import io

from harness import Bench

from corral._cli.output import SafeStream
from corral._model.text import neutralise

CASES = {
    "ascii line": "acme.hello  1.0.0  enabled  limited  -  Says hello to the user",
    "unicode, lines": "héllo 日本 😀\n" * 5,
    "emoji with joiners": "👨\u200d👩\u200d👧 family " * 4,
    "hostile": "ok\x1b[2J\x1b]52;c;cm0g\x07\u202eexe\ncorral: error: forged",
}


def main() -> None:
    bench = Bench("bench_neutralise", __doc__)
    n = 2_000 if bench.quick else 20_000
    bench.section("neutralise, per string")
    for name, text in CASES.items():
        for source in (None, "acme.evil"):
            call = functools.partial(neutralise, text, source)
            bench.time(f"neutralise {name} (source={source})", call, inner=n, unit="ns")
    table = "\n".join(f"acme.p{i}  1.0.{i}  enabled  limited  -  plugin number {i}"
                      for i in range(200)) + "\n"
    secrets = ["s3cr3t-one", "another-secret-value", "ghp_0123456789abcdef"]

    def redact(text: str) -> str:
        for value in secrets:
            if value in text:
                text = text.replace(value, "***")
        return text

    raw = io.StringIO()
    safe = SafeStream(io.StringIO(), redact)
    m = max(1, n // 100)
    bench.section("a 200-line table written to stdout")
    t_safe = bench.time("SafeStream with a redactor of 3 secrets",
                        lambda: safe.write(table), inner=m, unit="us")
    t_raw = bench.time("raw StringIO.write", lambda: raw.write(table), inner=m, unit="us")
    bench.ratio(t_safe, t_raw)
    bench.done()


if __name__ == "__main__":
    main()
