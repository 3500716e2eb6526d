"""The host's trust store and signature policy: whose signatures a host accepts.

``<home>/keys/trust.json`` records trusted and revoked keys by key id; it is
written atomically (temporary file, fsync, rename) under an ``flock`` so two
``corral keys`` commands never lose each other's change.  A revoked key stays
revoked: it is refused whatever the policy, and it can be revoked before it
was ever trusted (a leaked key announced by its owner).

``<home>/settings.toml`` says which signature states may be installed::

    [install]
    signatures = "trusted"   # trusted (default) | signed | any

- ``trusted``: signed by a key in the trust store, or by a key of a publisher
  the registry verified;
- ``signed``: any valid signature;
- ``any``: unsigned plugins too.

``modified`` and ``invalid`` plugins are refused under every policy, and an
unsigned plugin is accepted under ``trusted``/``signed`` only when the caller
passes ``allow_unsigned`` (the installer's explicit flag).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from corral._disk.files import exclusive, write_atomic
from corral._errors import ManifestError, SignatureInvalid, UsageError

if TYPE_CHECKING:
    from corral._distribution.signing import SignatureStatus

__all__ = [
    "POLICIES",
    "SETTINGS_FILE",
    "TrustStore",
    "TrustedKey",
    "check_signature",
    "load_policy",
]

POLICIES: Final = ("trusted", "signed", "any")
SETTINGS_FILE: Final = "settings.toml"
TRUST_FILE: Final = "trust.json"
_HEX64: Final = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class TrustedKey:
    """One entry of the trust store: a trusted or a revoked key."""

    keyid: str
    name: str
    state: str  # "trusted" | "revoked"
    public_key: str | None = None
    added_at: str | None = None
    revoked_at: str | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (also the stored form)."""
        return {
            "keyid": self.keyid,
            "name": self.name,
            "state": self.state,
            "public_key": self.public_key,
            "added_at": self.added_at,
            "revoked_at": self.revoked_at,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> TrustedKey:
        """Read a stored entry."""
        return cls(
            keyid=str(doc["keyid"]),
            name=str(doc.get("name", "")),
            state=str(doc["state"]),
            public_key=doc.get("public_key"),
            added_at=doc.get("added_at"),
            revoked_at=doc.get("revoked_at"),
            reason=str(doc.get("reason") or ""),
        )


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _key_from_argument(key: str) -> bytes:
    """Raw public key bytes from base64, PEM text, or a path to a ``.pub``/PEM file."""
    from corral._distribution.signing import parse_public_key

    text = key.strip()
    if text.startswith("-----BEGIN"):
        return parse_public_key(text)
    try:
        return parse_public_key(text)
    except UsageError:
        path = Path(text).expanduser()
        if not path.is_file():
            raise UsageError(
                f"{text!r} is neither a public key (base64 of the raw 32 bytes, or PEM) "
                "nor a readable .pub/PEM file",
                key=text,
            ) from None
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the public key ({exc})", file=str(path)) from None
    if "PRIVATE KEY" in text:
        raise UsageError(f"{path}: this is a private key; give its .pub file", file=str(path))
    return parse_public_key(text)


class TrustStore:
    """Trusted and revoked signing keys of one home (``<home>/keys/trust.json``)."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home).expanduser()
        self.path = self.home / "keys" / TRUST_FILE

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(self.path.parent / ".trust.lock"):
            yield

    def _read(self) -> dict[str, TrustedKey]:
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return {}
        try:
            doc = json.loads(raw)
            return {k["keyid"]: TrustedKey.from_dict(k) for k in doc["keys"]}
        except (ValueError, KeyError, TypeError) as exc:
            raise ManifestError(f"unreadable trust store ({exc})", file=str(self.path)) from None

    def _write(self, keys: dict[str, TrustedKey]) -> None:
        doc = {"version": 1, "keys": [keys[k].to_dict() for k in sorted(keys)]}
        text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
        write_atomic(self.path, text.encode(), mode=0o600)

    def trust(self, key: str, name: str) -> TrustedKey:
        """Trust a public key (base64 raw, PEM text, or a path to a .pub/PEM file).

        Raises:
            UsageError: not an Ed25519 public key, or the key was revoked.
        """
        from corral._distribution.signing import keyid_of

        raw = _key_from_argument(key)
        keyid = keyid_of(raw)
        with self._locked():
            keys = self._read()
            old = keys.get(keyid)
            if old is not None and old.state == "revoked":
                raise UsageError(
                    f"key {keyid} was revoked ({old.reason or 'no reason given'}); "
                    "a revoked key is never trusted again",
                    keyid=keyid,
                )
            entry = TrustedKey(
                keyid=keyid,
                name=name or (old.name if old else ""),
                state="trusted",
                public_key=base64.b64encode(raw).decode("ascii"),
                added_at=old.added_at if old else _now(),
            )
            keys[keyid] = entry
            self._write(keys)
        return entry

    def revoke(self, keyid: str, reason: str = "") -> None:
        """Revoke a key by id (known or not: a leaked key can be blocked in advance).

        Raises:
            UsageError: ``keyid`` is not 64 lowercase hex digits.
        """
        keyid = keyid.strip().lower()
        if not _HEX64.fullmatch(keyid):
            raise UsageError(f"key id {keyid!r} must be 64 hex digits (see corral keys list)",
                             keyid=keyid)
        with self._locked():
            keys = self._read()
            old = keys.get(keyid)
            keys[keyid] = TrustedKey(
                keyid=keyid,
                name=old.name if old else "",
                state="revoked",
                public_key=old.public_key if old else None,
                added_at=old.added_at if old else None,
                revoked_at=_now(),
                reason=reason,
            )
            self._write(keys)

    def list(self) -> list[TrustedKey]:
        """Every trusted or revoked key, by key id."""
        keys = self._read()
        return [keys[k] for k in sorted(keys)]

    def state(self, keyid: str) -> str:
        """``trusted``, ``revoked`` or ``unknown``."""
        entry = self._read().get(keyid)
        return entry.state if entry is not None else "unknown"


def load_policy(home: Path) -> str:
    """The home's ``[install] signatures`` policy (default ``trusted``).

    Raises:
        ManifestError: ``settings.toml`` is not TOML, or the value is not one of
            :data:`POLICIES` (the message names the file and the key).
    """
    path = Path(home).expanduser() / SETTINGS_FILE
    try:
        with path.open("rb") as fp:
            doc = tomllib.load(fp)
    except FileNotFoundError:
        return "trusted"
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"not valid TOML: {exc}", file=str(path)) from None
    install = doc.get("install", {})
    if not isinstance(install, dict):
        raise ManifestError("must be a table", file=str(path), key="install")
    value = install.get("signatures", "trusted")
    if value not in POLICIES:
        raise ManifestError(
            f"expected one of {', '.join(POLICIES)}, got {value!r}",
            file=str(path),
            key="install.signatures",
        )
    return str(value)


def check_signature(
    status: SignatureStatus,
    *,
    plugin_id: str,
    version: str,
    trust: TrustStore,
    publisher_verified: bool = False,
    allow_unsigned: bool = False,
    policy: str = "trusted",
) -> None:
    """Refuse a plugin whose signature state the policy does not accept.

    Raises:
        SignatureInvalid: the message names the plugin, version and the files or
            key at fault; details carry ``state``, ``keyid`` and ``problems``.
        UsageError: ``policy`` is not one of :data:`POLICIES`.
    """
    if policy not in POLICIES:
        raise UsageError(f"signature policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    what = f"{plugin_id} {version}"
    who = f"key {status.keyid} ({status.signer})" if status.keyid else "an unknown key"

    def refuse(message: str) -> SignatureInvalid:
        return SignatureInvalid(
            message,
            plugin_id=plugin_id,
            version=version,
            state=status.state,
            keyid=status.keyid,
            signer=status.signer,
            problems=list(status.problems),
        )

    if status.state == "modified":
        shown = "; ".join(status.problems[:5]) + (" ..." if len(status.problems) > 5 else "")
        raise refuse(f"{what} was modified after it was signed by {who}: {shown}")
    if status.state == "invalid":
        raise refuse(f"{what} has an invalid signature: {'; '.join(status.problems)}")
    if status.state == "unsigned":
        if allow_unsigned or policy == "any":
            return
        raise refuse(
            f"{what} is not signed; installing unsigned plugins needs an explicit "
            "--allow-unsigned (or [install] signatures = \"any\")"
        )
    if status.state != "signed" or status.keyid is None:
        raise refuse(f"{what}: unknown signature state {status.state!r}")
    known = trust.state(status.keyid)
    if known == "revoked":
        raise refuse(f"{what} is signed by revoked {who}; it is refused whatever the policy")
    if policy == "trusted" and known != "trusted" and not publisher_verified:
        hint = (
            f"corral keys trust {status.public_key} --name {status.signer or 'NAME'}"
            if status.public_key
            else f"corral keys trust PUBLIC_KEY --name {status.signer or 'NAME'}"
        )
        raise refuse(
            f"{what} is signed by {who}, which this host does not trust; "
            f"if you trust the signer: {hint}"
        )
