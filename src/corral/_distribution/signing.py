"""Plugin signatures: Ed25519 over a canonical manifest of every file's SHA-256.

A signed plugin holds ``corral.sig`` at its root::

    {"signed": {"_type": "corral/file-manifest", "spec_version": 1,
                "plugin": ID, "version": V,
                "files": {"rel/posix/path": {"sha256": HEX, "size": N}, ...}},
     "signatures": [{"keyid": HEX, "public_key": BASE64, "signer": NAME, "sig": BASE64}]}

The signature is Ed25519 over ``rfc8785.dumps(envelope["signed"])`` (RFC 8785
canonical JSON); ``keyid`` is the SHA-256 of the raw 32-byte public key.
``files`` lists exactly what :func:`~corral._disk.archive.pack_directory` packs
(``corral.sig`` excluded).  The rules, strict on purpose so that no byte of a
signed plugin can change unnoticed:

- ``corral.sig`` must itself be canonical JSON (RFC 8785), with canonical
  base64 and exactly one signature; anything else is ``invalid``;
- any file missing, added or changed makes the plugin ``modified``; so does a
  ``plugin``/``version`` that disagrees with ``corral.toml``;
- byte code (``*.pyc``, ``*.pyo``, anything in ``__pycache__``) is never
  trusted: in a directory or an archive it is an added file, even when its
  header matches the source (a header says nothing about the code inside),
  and corral's loaders never read it (see :mod:`corral._runtime.loader`);
- an archive is checked entry by entry (even ``__pycache__``), and a signed
  archive must be laid out exactly as ``pack_directory`` writes it (fixed
  dates and modes, no extra fields, comments, gaps or trailing bytes), so that
  changes that would not alter the extracted files are caught as well.

Whether a signer is *trusted* is not decided here: see :mod:`corral._distribution.trust`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import shutil
import stat
import struct
import tempfile
import tomllib
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from corral._disk.archive import (
    _DIR_ATTR,
    _FILE_ATTR,
    _PACK_SKIP_DIRS,
    _PACK_SKIP_SUFFIXES,
    PACK_DATE,
    SIGNATURE_FILE,
    extract_archive,
    plugin_files,
)
from corral._disk.files import sha256_file
from corral._disk.layout import MANIFEST_NAME
from corral._errors import CorralError, InvalidPluginError, NotFoundError, UsageError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

__all__ = [
    "MANIFEST_TYPE",
    "SIGNATURE_FILE",
    "STATES",
    "KeyInfo",
    "SignatureStatus",
    "SigningKey",
    "default_keys_dir",
    "file_manifest",
    "generate_key",
    "keyid_of",
    "list_keys",
    "load_signing_key",
    "parse_public_key",
    "sign_directory",
    "signature_envelope",
    "verify_archive",
    "verify_directory",
]

MANIFEST_TYPE: Final = "corral/file-manifest"
SPEC_VERSION: Final = 1
STATES: Final = ("signed", "unsigned", "invalid", "modified")
#: corral.sig is small; a huge one is refused before it is parsed.
MAX_SIG_BYTES: Final = 16 * 1024 * 1024
_KEY_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HEX64: Final = re.compile(r"^[0-9a-f]{64}$")
_CHUNK: Final = 1024 * 1024


@dataclass(frozen=True)
class SignatureStatus:
    """What a signature check found.

    ``state`` is one of :data:`STATES`; ``keyid``/``signer``/``public_key`` say
    who signed (when a signature was readable); ``problems`` name the files
    (``changed: pkg/a.py``) or the reason (``bad signature``).
    """

    state: str
    keyid: str | None = None
    signer: str | None = None
    problems: tuple[str, ...] = ()
    public_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the ``signature`` object of ``--json`` outputs)."""
        return {
            "state": self.state,
            "keyid": self.keyid,
            "signer": self.signer,
            "public_key": self.public_key,
            "problems": list(self.problems),
        }


@dataclass(frozen=True)
class SigningKey:
    """A private signing key with its name and public identity."""

    name: str
    keyid: str
    private_key: Ed25519PrivateKey
    public_key_b64: str


@dataclass(frozen=True)
class KeyInfo:
    """A key in the keys directory, public part only (no passphrase needed)."""

    name: str
    keyid: str
    public_key: str
    path: str
    encrypted: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "keyid": self.keyid,
            "public_key": self.public_key,
            "path": self.path,
            "encrypted": self.encrypted,
        }


# -- keys -------------------------------------------------------------------


def keyid_of(raw_public_key: bytes) -> str:
    """The key id: hex SHA-256 of the raw 32-byte Ed25519 public key."""
    return hashlib.sha256(raw_public_key).hexdigest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str, size: int | None = None) -> bytes:
    """Strict base64: canonical encoding only (no stray padding bits or whitespace)."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ValueError(f"{what} is not base64") from None
    if _b64(raw) != text:
        raise ValueError(f"{what} is not canonical base64")
    if size is not None and len(raw) != size:
        raise ValueError(f"{what} is {len(raw)} bytes, expected {size}")
    return raw


def parse_public_key(text: str) -> bytes:
    """The raw 32 bytes of an Ed25519 public key given as base64 or PEM text.

    Raises:
        UsageError: it is neither, or not an Ed25519 key.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text.encode())
        except ValueError as exc:
            raise UsageError(f"not a PEM public key: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise UsageError(f"not an Ed25519 public key ({type(key).__name__})")
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        return _unb64(text, "public key", 32)
    except ValueError as exc:
        raise UsageError(f"{exc} (give base64 of the raw 32-byte key, or PEM)") from None


def default_keys_dir() -> Path:
    """``$CORRAL_KEYS_DIR``, else ``~/.config/corral/keys``."""
    env = os.environ.get("CORRAL_KEYS_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".config" / "corral" / "keys"


def _check_key_name(name: str) -> str:
    if not isinstance(name, str) or not _KEY_NAME.fullmatch(name):
        raise UsageError(
            f"key name {name!r} must be 1-64 letters, digits, '.', '_' or '-'", key=name
        )
    return name


def _passphrase() -> bytes | None:
    value = os.environ.get("CORRAL_KEY_PASSPHRASE")
    return value.encode() if value else None


def generate_key(name: str, keys_dir: Path | None = None) -> SigningKey:
    """Create a new Ed25519 key ``<keys_dir>/<name>.pem`` (mode 0600) and ``<name>.pub``.

    The private key is PKCS8 PEM, encrypted with ``$CORRAL_KEY_PASSPHRASE`` when
    that is set.  An existing key is never overwritten.

    Raises:
        UsageError: bad name, or a key of that name exists.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    _check_key_name(name)
    folder = Path(keys_dir) if keys_dir is not None else default_keys_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem_path, pub_path = folder / f"{name}.pem", folder / f"{name}.pub"
    if pem_path.exists() or pub_path.exists():
        raise UsageError(f"{pem_path}: a key named {name!r} already exists", key=name)
    private = Ed25519PrivateKey.generate()
    secret = _passphrase()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(secret) if secret else serialization.NoEncryption()
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    try:
        fd = os.open(pem_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise UsageError(f"{pem_path}: a key named {name!r} already exists", key=name) from None
    try:
        with os.fdopen(fd, "wb") as fp:
            fp.write(pem)
            fp.flush()
            os.fsync(fp.fileno())
        os.chmod(pem_path, 0o600)
        _write_new(pub_path, (_b64(raw) + "\n").encode())
    except BaseException:
        pem_path.unlink(missing_ok=True)
        raise
    return SigningKey(name, keyid_of(raw), private, _b64(raw))


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as fp:
        fp.write(data)


def _load_private(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = path.read_bytes()
    encrypted = b"ENCRYPTED" in data.split(b"\n", 1)[0]
    secret = _passphrase()
    if encrypted and secret is None:
        raise UsageError(f"{path}: the key is encrypted; set CORRAL_KEY_PASSPHRASE", file=str(path))
    try:
        key = serialization.load_pem_private_key(data, password=secret if encrypted else None)
    except (ValueError, TypeError) as exc:
        hint = " (wrong CORRAL_KEY_PASSPHRASE?)" if encrypted else ""
        raise UsageError(f"{path}: cannot load the private key{hint}: {exc}",
                         file=str(path)) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{path}: not an Ed25519 key ({type(key).__name__})", file=str(path))
    return key


def load_signing_key(name: str | None = None, keys_dir: Path | None = None) -> SigningKey | None:
    """Load a signing key by name; with no name the only key, or the one named ``default``.

    Returns None when ``name`` is None and the keys directory holds no key.

    Raises:
        NotFoundError: no key ``name``.
        UsageError: several keys and none named ``default``; or the key cannot be
            decrypted or is not Ed25519 (the message names the file).
    """
    from cryptography.hazmat.primitives import serialization

    folder = Path(keys_dir) if keys_dir is not None else default_keys_dir()
    if name is None:
        names = sorted(p.stem for p in folder.glob("*.pem")) if folder.is_dir() else []
        if not names:
            return None
        if len(names) > 1 and "default" not in names:
            raise UsageError(
                f"{folder} holds several keys ({', '.join(names)}); name one with --key",
                keys_dir=str(folder),
            )
        name = "default" if "default" in names else names[0]
    _check_key_name(name)
    path = folder / f"{name}.pem"
    if not path.is_file():
        raise NotFoundError(f"{path}: no signing key named {name!r}", key=name)
    private = _load_private(path)
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return SigningKey(name, keyid_of(raw), private, _b64(raw))


def list_keys(keys_dir: Path | None = None) -> list[KeyInfo]:
    """The keys in ``keys_dir`` (public parts, read from each ``.pub``), by name."""
    folder = Path(keys_dir) if keys_dir is not None else default_keys_dir()
    out: list[KeyInfo] = []
    if not folder.is_dir():
        return out
    for pem in sorted(folder.glob("*.pem")):
        pub = pem.with_suffix(".pub")
        try:
            raw = parse_public_key(pub.read_text())
        except (OSError, UsageError):
            continue  # a stray .pem without its public half is not ours to list
        head = pem.read_bytes()[:64]
        out.append(KeyInfo(pem.stem, keyid_of(raw), _b64(raw), str(pem), b"ENCRYPTED" in head))
    return out


# -- signing ----------------------------------------------------------------


def _read_id_version(root: Path) -> tuple[str, str]:
    """``[plugin] id`` and ``version`` of ``root/corral.toml`` (raises if unreadable)."""
    path = root / MANIFEST_NAME
    with path.open("rb") as fp:
        doc = tomllib.load(fp)
    plugin = doc.get("plugin")
    if not isinstance(plugin, dict):
        raise ValueError(f"{path}: no [plugin] table")
    pid, version = plugin.get("id"), plugin.get("version")
    if not isinstance(pid, str) or not isinstance(version, str):
        raise ValueError(f"{path}: [plugin] id and version must be strings")
    return pid, version


def file_manifest(root: Path) -> dict[str, Any]:
    """The ``signed`` part of ``corral.sig`` for the plugin directory ``root``.

    Raises:
        NotFoundError: ``root`` is not a directory.
        InvalidPluginError: no readable ``corral.toml``, or a link or special file.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotFoundError(f"{root}: no such plugin directory", file=str(root))
    try:
        pid, version = _read_id_version(root)
    except (OSError, ValueError) as exc:
        raise InvalidPluginError(f"{root}: cannot read {MANIFEST_NAME}: {exc}",
                                 file=str(root / MANIFEST_NAME)) from None
    files: dict[str, dict[str, Any]] = {}
    for name, path in plugin_files(root):
        digest, size = sha256_file(path)
        files[name] = {"sha256": digest, "size": size}
    return {
        "_type": MANIFEST_TYPE,
        "spec_version": SPEC_VERSION,
        "plugin": pid,
        "version": version,
        "files": files,
    }


def signature_envelope(root: Path, key: SigningKey) -> bytes:
    """The ``corral.sig`` bytes that sign the directory ``root`` with ``key`` (nothing written)."""
    import rfc8785

    signed = file_manifest(root)
    sig = key.private_key.sign(rfc8785.dumps(signed))
    envelope: dict[str, Any] = {
        "signed": signed,
        "signatures": [
            {
                "keyid": key.keyid,
                "public_key": key.public_key_b64,
                "signer": key.name,
                "sig": _b64(sig),
            }
        ],
    }
    return rfc8785.dumps(envelope)


def sign_directory(root: Path, key: SigningKey) -> SignatureStatus:
    """Write ``corral.sig`` into ``root`` atomically; return the resulting status."""
    root = Path(root)
    data = signature_envelope(root, key)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{SIGNATURE_FILE}.", suffix=".tmp", dir=root)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fp:
            fp.write(data)
            fp.flush()
            os.fsync(fp.fileno())
        tmp.chmod(0o644)
        tmp.replace(root / SIGNATURE_FILE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return verify_directory(root)


# -- verifying --------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _exact_keys(obj: Any, keys: set[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ValueError(f"{where} must be an object")
    if set(obj) != keys:
        extra, missing = sorted(set(obj) - keys), sorted(keys - set(obj))
        raise ValueError(f"{where}: unexpected keys {extra}, missing keys {missing}")
    return obj


def _parse_envelope(data: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``signed`` part and the one signature entry; ``ValueError`` says what is wrong."""
    import rfc8785

    if len(data) > MAX_SIG_BYTES:
        raise ValueError(f"larger than {MAX_SIG_BYTES} bytes")
    try:
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    envelope = _exact_keys(doc, {"signed", "signatures"}, "envelope")
    try:
        canonical = rfc8785.dumps(envelope)
    except Exception as exc:  # floats or integers JSON cannot carry exactly
        raise ValueError(f"not canonical JSON ({exc})") from None
    if canonical != data:
        raise ValueError("not in canonical (RFC 8785) form")
    signed = _exact_keys(
        envelope["signed"], {"_type", "spec_version", "plugin", "version", "files"}, "signed"
    )
    if signed["_type"] != MANIFEST_TYPE:
        raise ValueError(f"signed._type is {signed['_type']!r}, expected {MANIFEST_TYPE!r}")
    if signed["spec_version"] != SPEC_VERSION or isinstance(signed["spec_version"], bool):
        raise ValueError(f"unsupported spec_version {signed['spec_version']!r}")
    if not isinstance(signed["plugin"], str) or not isinstance(signed["version"], str):
        raise ValueError("signed.plugin and signed.version must be strings")
    files = signed["files"]
    if not isinstance(files, dict):
        raise ValueError("signed.files must be an object")
    for name, entry in files.items():
        _exact_keys(entry, {"sha256", "size"}, f"signed.files[{name!r}]")
        if not isinstance(entry["sha256"], str) or not _HEX64.fullmatch(entry["sha256"]):
            raise ValueError(f"signed.files[{name!r}].sha256 is not lowercase hex SHA-256")
        size = entry["size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"signed.files[{name!r}].size is not a non-negative integer")
    sigs = envelope["signatures"]
    if not isinstance(sigs, list) or len(sigs) != 1:
        raise ValueError("signatures must be a list of exactly one signature")
    sig = _exact_keys(sigs[0], {"keyid", "public_key", "signer", "sig"}, "signatures[0]")
    for key in ("keyid", "public_key", "signer", "sig"):
        if not isinstance(sig[key], str):
            raise ValueError(f"signatures[0].{key} must be a string")
    return signed, sig


#: Tool folders a plugin never imports from: ignored in a directory (not in an archive).
_INERT_DIRS: Final = _PACK_SKIP_DIRS - {"__pycache__"}


def _listing(root: Path, *, strict: bool) -> tuple[dict[str, Path], list[str]]:
    """Files under ``root`` as ``{posix name: path}`` plus problems (links, special files).

    ``strict`` (an extracted archive): every entry counts.  Not ``strict`` (a
    directory): tool folders (``.git``, ...) are ignored.  Byte code counts
    everywhere: a cache whose header matches its source may still hold other code.
    """
    found: dict[str, Path] = {}
    problems: list[str] = []
    for folder, dirnames, filenames in os.walk(root):
        here = Path(folder)
        keep = []
        for d in sorted(dirnames):
            path = here / d
            if path.is_symlink():
                problems.append(f"added: {path.relative_to(root).as_posix()} (a link)")
            elif strict or d not in _INERT_DIRS:
                keep.append(d)
        dirnames[:] = keep
        for name in filenames:
            path = here / name
            rel = path.relative_to(root).as_posix()
            if rel == SIGNATURE_FILE:
                continue
            mode = path.lstat().st_mode
            if not stat.S_ISREG(mode):
                problems.append(f"added: {rel} (not a regular file)")
                continue
            if name.endswith(_PACK_SKIP_SUFFIXES) or "__pycache__" in rel.split("/"):
                problems.append(f"added: {rel} (byte code is never trusted; delete it)")
                continue
            found[rel] = path
    return found, problems


def _verify(root: Path, *, strict: bool) -> SignatureStatus:
    import rfc8785
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    sig_path = root / SIGNATURE_FILE
    if not sig_path.is_file() or sig_path.is_symlink():
        if os.path.lexists(sig_path):
            return SignatureStatus("invalid", problems=(f"{SIGNATURE_FILE} is not a regular file",))
        return SignatureStatus("unsigned")
    try:
        with sig_path.open("rb") as fp:
            data = fp.read(MAX_SIG_BYTES + 1)
        signed, sig = _parse_envelope(data)
        raw_key = _unb64(sig["public_key"], "signatures[0].public_key", 32)
        sig_bytes = _unb64(sig["sig"], "signatures[0].sig", 64)
    except (OSError, ValueError) as exc:
        return SignatureStatus("invalid", problems=(f"malformed {SIGNATURE_FILE}: {exc}",))
    keyid = keyid_of(raw_key)
    who: dict[str, Any] = {"keyid": keyid, "signer": sig["signer"], "public_key": sig["public_key"]}
    if sig["keyid"] != keyid:
        return SignatureStatus(
            "invalid", problems=(f"keyid {sig['keyid']} does not match the public key {keyid}",),
            **who,
        )
    public: Ed25519PublicKey = Ed25519PublicKey.from_public_bytes(raw_key)
    try:
        public.verify(sig_bytes, rfc8785.dumps(signed))
    except InvalidSignature:
        return SignatureStatus("invalid", problems=("bad signature",), **who)
    found, problems = _listing(root, strict=strict)
    listed: dict[str, dict[str, Any]] = signed["files"]
    for name in sorted(set(listed) - set(found)):
        problems.append(f"missing: {name}")
    for name in sorted(set(found) - set(listed)):
        problems.append(f"added: {name}")
    for name in sorted(set(found) & set(listed)):
        try:
            digest, size = sha256_file(found[name])
        except OSError as exc:
            problems.append(f"changed: {name} (unreadable: {exc.strerror})")
            continue
        if digest != listed[name]["sha256"] or size != listed[name]["size"]:
            problems.append(f"changed: {name}")
    try:
        pid, version = _read_id_version(root)
    except (OSError, ValueError, tomllib.TOMLDecodeError) as exc:
        problems.append(f"unreadable {MANIFEST_NAME}: {exc}")
    else:
        if (pid, version) != (signed["plugin"], signed["version"]):
            problems.append(
                f"manifest says {signed['plugin']} {signed['version']}, "
                f"{MANIFEST_NAME} says {pid} {version}"
            )
    if problems:
        return SignatureStatus("modified", problems=tuple(problems), **who)
    return SignatureStatus("signed", **who)


def verify_directory(root: Path, *, strict: bool = False) -> SignatureStatus:
    """Check the signature of the plugin directory ``root``; never raises for bad content.

    By default tool folders (``.git``, ``.mypy_cache``) are ignored; byte code
    (``__pycache__``, ``*.pyc``) always counts as an added file.  With ``strict``
    every file counts: use it on a tree freshly extracted from an archive.
    """
    root = Path(root)
    if not root.is_dir():
        return SignatureStatus("invalid", problems=(f"{root}: not a directory",))
    return _verify(root, strict=strict)


def verify_archive(path: Path) -> SignatureStatus:
    """Check the signature of a ``.corral`` archive; never raises for bad content.

    The archive is safely extracted to a temporary directory and checked there
    entry by entry; a broken or hostile zip is ``invalid`` with the reason, and
    a signed archive not laid out as ``pack_directory`` writes it is ``modified``.
    """
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix="corral-verify-"))
    try:
        try:
            plugin_dir = extract_archive(path, tmp / "plugin")
        except CorralError as exc:
            return SignatureStatus("invalid", problems=(exc.message,))
        except OSError as exc:
            return SignatureStatus("invalid", problems=(f"{path}: {exc}",))
        status = _verify(plugin_dir, strict=True)
        if status.state in ("signed", "modified"):
            layout = _layout_problem(path)
            if layout is not None:
                return SignatureStatus(
                    "modified",
                    status.keyid,
                    status.signer,
                    (*status.problems, f"archive layout: {layout}"),
                    status.public_key,
                )
        return status
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- the canonical layout of a signed archive --------------------------------

_LOCAL: Final = struct.Struct("<4sHHHHHIIIHH")
_CENTRAL: Final = struct.Struct("<4sBBHHHHHIIIHHHHHII")
_END: Final = struct.Struct("<4sHHHHIIH")
_PACK_DOS_TIME: Final = (PACK_DATE[3] << 11) | (PACK_DATE[4] << 5) | (PACK_DATE[5] // 2)
_PACK_DOS_DATE: Final = ((PACK_DATE[0] - 1980) << 9) | (PACK_DATE[1] << 5) | PACK_DATE[2]


def _deflate_problem(comp: bytes) -> str | None:
    """Why a raw deflate stream is not the only spelling of its output, or None.

    A stream must end exactly at its last byte, and the padding bits after the
    final block must be zero: otherwise flipping them would change the archive
    without changing a single extracted byte.
    """
    if not comp:
        return "empty compressed data"
    d = zlib.decompressobj(-15)
    try:
        for at in range(0, len(comp) - 1, _CHUNK):
            d.decompress(comp[at : min(at + _CHUNK, len(comp) - 1)])
            if d.eof:
                return "bytes after the end of the compressed data"
        last = comp[-1]
        probe = d.copy()
        tail = probe.decompress(bytes([last]))
    except zlib.error as exc:
        return f"corrupt compressed data ({exc})"
    if not probe.eof or probe.unused_data:
        return "the compressed data does not end at its last byte"
    for spare in range(1, 9):
        mask = 0xFF >> spare
        if not last & ~mask & 0xFF:
            continue
        other = d.copy()
        try:
            same = other.decompress(bytes([last & mask])) == tail and other.eof
        except zlib.error:
            continue
        if same:
            return "padding bits after the compressed data are not zero"
    return None


def _layout_problem(path: Path) -> str | None:
    """Why ``path`` is not laid out exactly as ``pack_directory`` writes it, or None.

    Every byte outside the compressed data is pinned: local headers match the
    central directory, fixed dates, versions and modes, no extra fields, no
    comments, no data descriptors, entries back to back from offset 0 and the
    end record last.  The compressed data itself is covered by the CRC and by
    the file manifest.
    """
    data = path.read_bytes()
    if len(data) < _END.size:
        return "too short"
    end = len(data) - _END.size
    sig, disk, cd_disk, n_disk, n_total, cd_size, cd_offset, comment = _END.unpack_from(data, end)
    if sig != b"PK\x05\x06" or comment != 0:
        return "the end record is not the last 22 bytes (a comment or trailing bytes)"
    if disk or cd_disk or n_disk != n_total or cd_offset + cd_size != end:
        return "the end record does not match the central directory"
    offset = 0
    at = cd_offset
    previous = ""
    for index in range(n_total):
        if at + _CENTRAL.size > end:
            return f"central directory entry {index} is truncated"
        (c_sig, made_ver, made_sys, need, flags, method, c_time, c_date, crc, csize, usize,
         name_len, extra_len, comment_len, disk_start, internal, external,
         local_at) = _CENTRAL.unpack_from(data, at)
        name_bytes = data[at + _CENTRAL.size : at + _CENTRAL.size + name_len]
        at += _CENTRAL.size + name_len + extra_len + comment_len
        name = name_bytes.decode("utf-8", "replace")
        expected_attr = _DIR_ATTR if name.endswith("/") else _FILE_ATTR
        expected_method = zipfile.ZIP_STORED if name.endswith("/") else zipfile.ZIP_DEFLATED
        if (c_sig != b"PK\x01\x02" or (made_ver, made_sys, need) != (20, 3, 20)
                or flags & ~0x800 or method != expected_method
                or (c_time, c_date) != (_PACK_DOS_TIME, _PACK_DOS_DATE)
                or extra_len or comment_len or disk_start or internal
                or external != expected_attr):
            return f"entry {name!r}: header fields differ from what corral pack writes"
        if name <= previous:
            return f"entry {name!r}: entries are not in sorted order"
        previous = name
        if local_at != offset or offset + _LOCAL.size > cd_offset:
            return f"entry {name!r}: not stored back to back with the previous entry"
        local = _LOCAL.unpack_from(data, offset)
        if local != (b"PK\x03\x04", need, flags, method, c_time, c_date, crc, csize, usize,
                     name_len, 0):
            return f"entry {name!r}: local header differs from the central directory"
        if data[offset + _LOCAL.size : offset + _LOCAL.size + name_len] != name_bytes:
            return f"entry {name!r}: local name differs from the central directory"
        start = offset + _LOCAL.size + name_len
        if method == zipfile.ZIP_DEFLATED:
            problem = _deflate_problem(data[start : start + csize])
            if problem is not None:
                return f"entry {name!r}: {problem}"
        offset = start + csize
    if offset != cd_offset:
        return "bytes between the last entry and the central directory"
    if at != end:
        return "bytes between the central directory and the end record"
    return None
