"""What showing plugin text safely costs: ``neutralise`` per string, and a redacted stdout.

Prints nanoseconds per call for typical strings (printable ASCII, unicode with
newlines, hostile) and the same-run ratio of writing a 200-line table through
the CLI's :class:`SafeStream` (with a redactor holding three secrets) to writing
it raw.

    .venv/bin/python benchmarks/bench_neutralise.py [--n N]
"""

from __future__ import annotations

import argparse
import functools
import io
import timeit

from corral._cli.output import SafeStream
from corral._model.text import neutralise

CASES = {
    "ascii line": "acme.hello  1.0.0  enabled  limited  -  Says hello to the user",
    "unicode, lines": "héllo 日本 😀\n" * 5,
    "emoji with joiners": "👨\u200d👩\u200d👧 family " * 4,
    "hostile": "ok\x1b[2J\x1b]52;c;cm0g\x07\u202eexe\ncorral: error: forged",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    n = parser.parse_args().n
    for name, text in CASES.items():
        for source in (None, "acme.evil"):
            call = functools.partial(neutralise, text, source)
            ns = min(timeit.repeat(call, number=n, repeat=3)) / n
            print(f"neutralise {name:20s} source={source!s:10s} {ns * 1e9:8.0f} ns")
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
    t_raw = min(timeit.repeat(lambda: raw.write(table), number=m, repeat=3)) / m
    t_safe = min(timeit.repeat(lambda: safe.write(table), number=m, repeat=3)) / m
    print(f"200-line table: raw {t_raw * 1e6:.1f} us, SafeStream+redact {t_safe * 1e6:.1f} us, "
          f"ratio {t_safe / t_raw:.1f}x")


if __name__ == "__main__":
    main()
