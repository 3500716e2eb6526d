"""The command line's output faces: safe stdout/stderr and the printer of log records.

A plugin's record is printed as ``<plugin id>: <level>: <message>``, the id
taken from ``record.plugin_id``, the message neutralised under that id; the
host's own records as ``corral: <level>: ...``.  Secret values are scrubbed
from everything printed when the verb may run plugin code.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

from corral._cli.output import SafeStream
from corral._disk.layout import default_home
from corral._model.text import neutralise
from corral._services.secrets import SecretRedactor, SecretStore

__all__ = ["LogPrinter", "faces"]

_PLUGIN_LOGGERS = "corral.plugin."


class LogPrinter(logging.Handler):
    """Prints warnings and worse on stderr, a plugin's under its id, neutralised."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                message = f"{message}\n{record.exc_text}"
            source = getattr(record, "plugin_id", None)
            if not isinstance(source, str):  # a child of a plugin's logger has no filter
                plugin = record.name.startswith(_PLUGIN_LOGGERS)
                source = record.name[len(_PLUGIN_LOGGERS):] if plugin else "corral"
            sys.stderr.write(f"{neutralise(source, one_line=True)}: {record.levelname.lower()}: "
                             f"{neutralise(message, source)}\n")
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def faces(home: str | None) -> Iterator[None]:
    """While running a verb: stdout and stderr safe and redacted, corral's logs printed."""
    redactor = SecretRedactor(SecretStore(Path(home) if home else default_home()))
    out, err = sys.stdout, sys.stderr
    sys.stdout = SafeStream(out, redactor.redact)
    sys.stderr = SafeStream(err, redactor.redact)
    log = logging.getLogger("corral")
    printer = LogPrinter()
    printer.addFilter(redactor)
    log.addHandler(printer)
    try:
        yield
    finally:
        log.removeHandler(printer)
        sys.stdout, sys.stderr = out, err
