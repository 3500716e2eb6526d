"""Secrets: encrypted at rest, handed to a plugin only with a ``secrets:NAME`` grant.

Values are encrypted with Fernet (AES-128-CBC + HMAC-SHA256, from
``cryptography``) into ``<home>/secrets.json``.  The key comes from the OS
keyring when the ``keyring`` package is installed and has a usable backend
(set ``CORRAL_SECRETS_KEYRING=0`` to never use it); otherwise from
``<home>/secret.key``, created readable by its owner only (0600) and refused
if anyone else can read it.

No value ever reaches a log, an event, an error message, a metric or JSON
output: errors name the secret, never its content, and :class:`SecretRedactor`
scrubs known values from what plugins log (on each plugin's logger), from the
errors the host stores and from everything the command line prints.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, final

from corral._disk.files import exclusive, write_atomic
from corral._errors import CorralError, NotFoundError, UnavailableError, UsageError
from corral._model.config import resolve_secret_refs
from corral._model.text import neutralise

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

    from corral._model.permissions import Permissions

__all__ = [
    "PluginLogFilter",
    "PluginSecrets",
    "SecretRedactor",
    "SecretStore",
    "secrets_broker_op",
    "watch_plugin_log",
]

SECRETS_NAME: Final = "secrets.json"
KEY_NAME: Final = "secret.key"
KEYRING_SERVICE: Final = "corral"
MAX_SECRET_BYTES: Final = 64 * 1024
_NAME: Final = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
REDACTED: Final = "***"


def check_name(name: object) -> str:
    """Return ``name`` if it is a valid secret name, else raise :class:`UsageError`."""
    if type(name) is not str or not _NAME.match(name):
        raise UsageError(
            f"malformed secret name {name!r}: 1-128 letters, digits, '_', '.' or '-'",
        )
    return name


def _keyring_key(home: Path) -> bytes | None:
    """The key kept in the OS keyring (made on first use), or ``None`` without a usable one."""
    if os.environ.get("CORRAL_SECRETS_KEYRING", "1") == "0":
        return None
    try:
        import keyring  # type: ignore[import-not-found,unused-ignore]
        import keyring.errors  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    try:
        backend = keyring.get_keyring()
        if getattr(backend, "priority", 0) <= 0 or type(backend).__module__.startswith(
            ("keyring.backends.fail", "keyring.backends.null", "keyrings.alt")
        ):
            return None
        user = f"secrets-key:{home}"
        key = keyring.get_password(KEYRING_SERVICE, user)
        if key is None:
            from cryptography.fernet import Fernet

            key = Fernet.generate_key().decode()
            keyring.set_password(KEYRING_SERVICE, user, key)
        return str(key).encode()
    except Exception:  # any backend failure: fall back to the key file
        return None


def _file_key(path: Path) -> bytes:
    """The key in ``path``, created 0600 on first use; refused if others may read it."""
    from cryptography.fernet import Fernet

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise UsageError(
                f"{path} is readable by others (mode {stat.filemode(mode)}); "
                f"run: chmod 600 {path}",
                file=str(path),
            ) from None
        return path.read_bytes().strip()
    key = Fernet.generate_key()
    try:
        os.write(fd, key)
    finally:
        os.close(fd)
    return key


@final
class SecretStore:
    """The home's secrets: set, list, remove, and get under a plugin's grants.

    :param use_keyring: ``None`` (default) uses the OS keyring when usable;
        ``False`` always uses the key file.
    """

    def __init__(self, home: str | os.PathLike[str], *, use_keyring: bool | None = None) -> None:
        self.home: Final = Path(home)
        self.path: Final = self.home / SECRETS_NAME
        self._use_keyring = use_keyring
        self._fernet: Fernet | None = None
        self.key_source: str | None = None
        self._lock = threading.Lock()

    def _cipher(self) -> Fernet:
        if self._fernet is None:
            from cryptography.fernet import Fernet

            self.home.mkdir(parents=True, exist_ok=True)
            key = None if self._use_keyring is False else _keyring_key(self.home)
            if key is not None:
                self.key_source = "keyring"
            else:
                key = _file_key(self.home / KEY_NAME)
                self.key_source = str(self.home / KEY_NAME)
            self._fernet = Fernet(key)
        return self._fernet

    def _read(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            raise UnavailableError(f"{self.path} is damaged (not JSON)",
                                   file=str(self.path)) from None
        secrets = doc.get("secrets", {}) if isinstance(doc, dict) else None
        if not isinstance(secrets, dict):
            raise UnavailableError(f"{self.path} is damaged (no secrets table)",
                                   file=str(self.path))
        return secrets

    @contextlib.contextmanager
    def _editing(self) -> Iterator[dict[str, Any]]:
        self.home.mkdir(parents=True, exist_ok=True)
        with self._lock, exclusive(self.home / ".secrets.lock"):
            secrets = self._read()
            yield secrets
            doc = json.dumps({"version": 1, "secrets": secrets}, indent=1, sort_keys=True)
            write_atomic(self.path, doc.encode("utf-8"), mode=0o600)

    def set(self, name: str, value: str) -> None:
        """Store (or replace) the secret ``name``."""
        check_name(name)
        if type(value) is not str:
            raise UsageError(f"the value of secret {name!r} must be a string", secret=name)
        if not value:
            raise UsageError(f"the value of secret {name!r} is empty", secret=name)
        if len(value.encode()) > MAX_SECRET_BYTES:
            raise UsageError(f"the value of secret {name!r} is larger than {MAX_SECRET_BYTES} "
                             "bytes", secret=name)
        token = self._cipher().encrypt(value.encode()).decode()
        with self._editing() as secrets:
            secrets[name] = {"token": token, "updated_at": time.time()}

    def remove(self, name: str) -> bool:
        """Forget the secret ``name``; return whether it existed."""
        check_name(name)
        with self._editing() as secrets:
            return secrets.pop(name, None) is not None

    def names(self) -> list[str]:
        """Names of the stored secrets, sorted (never their values)."""
        return sorted(self._read())

    def info(self) -> list[dict[str, Any]]:
        """Name and last update time of each secret (never the values)."""
        return [{"name": n, "updated_at": e.get("updated_at")}
                for n, e in sorted(self._read().items())]

    def get(
        self,
        name: str,
        *,
        perms: Permissions | None = None,
        plugin_id: str | None = None,
    ) -> str:
        """The value of ``name``; a plugin needs ``secrets:NAME``.

        Raises :class:`NotFoundError` (naming the secret) when it is not set.
        """
        check_name(name)
        if perms is not None:
            perms.check_api("secrets", name, plugin_id=plugin_id)
        entry = self._read().get(name)
        if entry is None:
            raise NotFoundError(f"no secret {name!r} is set (corral secret set {name})",
                                plugin_id=plugin_id, secret=name)
        from cryptography.fernet import InvalidToken

        try:
            return self._cipher().decrypt(str(entry["token"]).encode()).decode()
        except (InvalidToken, KeyError, ValueError):
            raise UnavailableError(
                f"secret {name!r} cannot be decrypted with this home's key "
                f"({self.key_source}); set it again",
                plugin_id=plugin_id, secret=name,
            ) from None

    def resolve_config(
        self,
        config: Any,
        *,
        perms: Permissions | None = None,
        plugin_id: str | None = None,
    ) -> Any:
        """``config`` with its ``"${secret:NAME}"`` values replaced, under the plugin's grants.

        A missing secret raises :class:`NotFoundError` naming the secret and the
        config key that refers to it.
        """
        def get(name: str, key: str) -> str:
            try:
                return self.get(name, perms=perms, plugin_id=plugin_id)
            except NotFoundError as exc:
                raise NotFoundError(
                    f"config key {key} of {plugin_id or 'the host'} refers to secret "
                    f"{name!r}, which is not set", plugin_id=plugin_id, secret=name, key=key,
                ) from exc

        return resolve_secret_refs(config, get)

    def values(self) -> list[str]:
        """Every stored value, for :class:`SecretRedactor` only."""
        return [self.get(n) for n in self.names()]

    def for_plugin(self, plugin_id: str, perms: Permissions) -> PluginSecrets:
        """``ctx.secrets`` for one plugin."""
        return PluginSecrets(self, plugin_id, perms)


@final
class PluginSecrets:
    """``ctx.secrets``: the secrets one plugin was granted."""

    __slots__ = ("_perms", "_store", "plugin_id")

    def __init__(self, store: SecretStore, plugin_id: str, perms: Permissions) -> None:
        self._store = store
        self.plugin_id: Final = plugin_id
        self._perms = perms

    def get(self, name: str) -> str:
        """The value of ``name`` (needs ``secrets:NAME``)."""
        return self._store.get(name, perms=self._perms, plugin_id=self.plugin_id)

    def __repr__(self) -> str:
        return f"<PluginSecrets {self.plugin_id}>"


@final
class SecretRedactor(logging.Filter):
    """A logging filter replacing known secret values with ``***`` in records.

    The host attaches it to every plugin's logger and the command line to
    everything it prints.  Values are read on first need (a home without
    secrets pays nothing); :meth:`refresh` after a secret changes.
    """

    def __init__(self, store: SecretStore) -> None:
        super().__init__()
        self._store = store
        self._values: list[str] | None = None
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Forget the values; they are read again on the next use."""
        self._values = None

    def _known(self) -> list[str]:
        values = self._values
        if values is None:
            with self._lock:
                values = []
                if self._store.path.exists():
                    with contextlib.suppress(CorralError):
                        # a value also as it reads in a JSON string and once neutralised
                        found = {form for v in self._store.values() if len(v) >= 4
                                 for form in (v, json.dumps(v, ensure_ascii=False)[1:-1],
                                              neutralise(v), neutralise(v, one_line=True))}
                        values = sorted(found, key=len, reverse=True)
                self._values = values
        return values

    def redact(self, text: str) -> str:
        """``text`` with every known secret value replaced by ``***``."""
        for value in self._known():
            if value in text:
                text = text.replace(value, REDACTED)
        return text

    def redact_doc(self, doc: Any) -> Any:
        """``doc`` (JSON data) with secret values replaced in every string, keys included."""
        if not self._known():
            return doc
        if isinstance(doc, str):
            return self.redact(doc)
        if isinstance(doc, dict):
            return {self.redact_doc(k): self.redact_doc(v) for k, v in doc.items()}
        if isinstance(doc, (list, tuple)):
            return [self.redact_doc(v) for v in doc]
        return doc

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._known():
            return True
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg = redacted
            record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


@final
class PluginLogFilter(logging.Filter):
    """On a plugin's logger: names the plugin in ``record.plugin_id`` and redacts secrets."""

    def __init__(self, plugin_id: str, redactor: SecretRedactor) -> None:
        super().__init__()
        self.plugin_id: Final = plugin_id
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.plugin_id = self.plugin_id
        return self._redactor.filter(record)


def watch_plugin_log(plugin_id: str, redactor: SecretRedactor) -> None:
    """Put a :class:`PluginLogFilter` (only one) on the logger ``corral.plugin.<id>``."""
    log = logging.getLogger(f"corral.plugin.{plugin_id}")
    for old in [f for f in log.filters if isinstance(f, PluginLogFilter)]:
        log.removeFilter(old)
    log.addFilter(PluginLogFilter(plugin_id, redactor))


def secrets_broker_op(
    store: SecretStore, plugin_id: str, perms: Permissions, op: str, args: dict[str, Any]
) -> Any:
    """Serve a sandboxed plugin's ``secrets.get`` broker request."""
    if op == "secrets.get":
        return store.get(str(args.get("name", "")), perms=perms, plugin_id=plugin_id)
    raise UsageError(f"unknown secrets operation {op!r}", plugin_id=plugin_id)
