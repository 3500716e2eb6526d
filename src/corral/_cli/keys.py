"""The command line's keys, sign and verify-signature verbs: signing keys and the trust store.

``corral keys generate|list|trust|revoke|export`` manage the publisher's own
keys (``--keys-dir``, default ``$CORRAL_KEYS_DIR`` or ``~/.config/corral/keys``)
and the home's trust store; ``corral sign`` writes ``corral.sig`` into a plugin
directory and ``corral verify-signature`` reports a directory's or an archive's
signature state (exit 4 unless it is signed and intact).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral._cli.output import dump, table
from corral._errors import SignatureInvalid, UsageError

if TYPE_CHECKING:
    from corral._cli.output import VerbAdder
    from corral._distribution.trust import TrustStore

__all__ = ["add_verbs"]


def _home(args: argparse.Namespace) -> Path:
    if args.home:
        return Path(args.home).expanduser().absolute()
    from corral._disk.layout import default_home

    return default_home().absolute()


def _store(args: argparse.Namespace) -> TrustStore:
    from corral._distribution.trust import TrustStore

    return TrustStore(_home(args))


def _keys_dir(args: argparse.Namespace) -> Path | None:
    return Path(args.keys_dir).expanduser() if args.keys_dir else None


def cmd_keys(args: argparse.Namespace) -> int:
    """Dispatch ``corral keys ACTION``."""
    action = args.action
    if action is None:
        raise UsageError("corral keys needs an action: generate, list, trust, revoke or export")
    handler = {
        "generate": _generate,
        "list": _list,
        "trust": _trust,
        "revoke": _revoke,
        "export": _export,
    }[action]
    return handler(args)


def _generate(args: argparse.Namespace) -> int:
    from corral._distribution.signing import generate_key

    key = generate_key(args.name, _keys_dir(args))
    doc: dict[str, Any] = {
        "name": key.name,
        "keyid": key.keyid,
        "public_key": key.public_key_b64,
        "trusted": False,
    }
    if args.trust:
        _store(args).trust(key.public_key_b64, key.name)
        doc["trusted"] = True
    if args.json:
        dump({"generated": doc})
    else:
        print(f"generated key {key.name} ({key.keyid})")
        print(f"public key: {key.public_key_b64}")
        if args.trust:
            print(f"trusted in {_home(args)}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from corral._distribution.signing import list_keys

    own = list_keys(_keys_dir(args))
    store = _store(args)
    entries = store.list()
    if args.json:
        dump({"keys": [k.to_dict() for k in own], "trust": [e.to_dict() for e in entries]})
        return 0
    if own:
        print(table([[k.name, k.keyid[:16], "encrypted" if k.encrypted else "plain"]
                     for k in own], ["name", "keyid", "private key"]))
    else:
        print("no signing keys (corral keys generate NAME)")
    if entries:
        print()
        print(table([[e.name or "-", e.keyid[:16], e.state, e.reason or ""] for e in entries],
                    ["trusted key", "keyid", "state", "reason"]))
    else:
        print(f"no trusted keys in {store.path}")
    return 0


def _trust(args: argparse.Namespace) -> int:
    entry = _store(args).trust(args.key, args.name)
    if args.json:
        dump({"trusted": entry.to_dict()})
    else:
        print(f"trusted {entry.name} ({entry.keyid})")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    store = _store(args)
    store.revoke(args.keyid, args.reason)
    keyid = args.keyid.strip().lower()
    if args.json:
        dump({"revoked": {"keyid": keyid, "reason": args.reason}})
    else:
        print(f"revoked {keyid}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from corral._distribution.signing import list_keys
    from corral._errors import NotFoundError

    folder = _keys_dir(args)
    keys = list_keys(folder)
    if args.name is None:
        chosen = [k for k in keys if k.name == "default"] or keys
        if len(chosen) > 1:
            raise UsageError("several signing keys and none named 'default'; name one")
    else:
        chosen = [k for k in keys if k.name == args.name]
    if not chosen:
        from corral._distribution.signing import default_keys_dir

        where = folder or default_keys_dir()
        what = f"no signing key named {args.name!r}" if args.name else "no signing keys"
        raise NotFoundError(f"{where}: {what}", key=args.name)
    key = chosen[0]
    if args.json:
        dump({"name": key.name, "keyid": key.keyid, "public_key": key.public_key})
    else:
        print(key.public_key)
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    """``corral sign PATH``: write corral.sig into a plugin directory."""
    from corral._distribution.signing import load_signing_key, sign_directory
    from corral._errors import NotFoundError

    path = Path(args.path)
    if not path.is_dir():
        raise NotFoundError(f"{path}: not a plugin directory (sign before packing)",
                            file=str(path))
    key = load_signing_key(args.key, _keys_dir(args))
    if key is None:
        raise UsageError("no signing key; create one with: corral keys generate NAME")
    status = sign_directory(path, key)
    if args.json:
        dump({"path": str(path), "signature": status.to_dict()})
    else:
        print(f"signed {path} with {key.name} ({key.keyid})")
    return 0 if status.state == "signed" else 4


def cmd_verify_signature(args: argparse.Namespace) -> int:
    """``corral verify-signature PATH``: a directory's or archive's signature state."""
    from corral._distribution.signing import verify_archive, verify_directory
    from corral._errors import NotFoundError

    path = Path(args.path)
    if path.is_dir():
        status = verify_directory(path)
    elif path.is_file():
        status = verify_archive(path)
    else:
        raise NotFoundError(f"{path}: no such plugin directory or archive", file=str(path))
    trust = _store(args).state(status.keyid) if status.keyid else None
    if args.json:
        dump({"path": str(path), "signature": status.to_dict(), "trust": trust})
    else:
        if status.state == "signed":
            print(f"{path}: signed by {status.signer} (key {status.keyid}, {trust})")
        else:
            print(f"{path}: {status.state}")
        for problem in status.problems:
            print(f"  {problem}")
    return 0 if status.state == "signed" else SignatureInvalid.exit_code


def add_verbs(verb: VerbAdder) -> None:
    """Register keys, sign and verify-signature."""
    p = verb("keys", cmd_keys, "signing keys and the trust store")
    sub = p.add_subparsers(dest="action", parser_class=type(p))

    def action(name: str, help_: str, *, keys_dir: bool = False) -> argparse.ArgumentParser:
        a = sub.add_parser(name, help=help_, description=help_)
        a.add_argument("--json", action="store_true", help="print one JSON document")
        if keys_dir:
            a.add_argument("--keys-dir", help="where signing keys live "
                           "(default $CORRAL_KEYS_DIR or ~/.config/corral/keys)")
        return a

    a = action("generate", "create an Ed25519 signing key", keys_dir=True)
    a.add_argument("name")
    a.add_argument("--trust", action="store_true", help="also trust it in this home")
    action("list", "own signing keys and this home's trusted and revoked keys", keys_dir=True)
    a = action("trust", "trust a public key (base64, PEM, or a .pub file)")
    a.add_argument("key")
    a.add_argument("--name", required=True, help="who the key belongs to")
    a = action("revoke", "revoke a key by id (it is then refused whatever the policy)")
    a.add_argument("keyid")
    a.add_argument("--reason", default="")
    a = action("export", "print a signing key's public key", keys_dir=True)
    a.add_argument("name", nargs="?")

    p = verb("sign", cmd_sign, "write corral.sig (a signed file manifest) into a plugin directory")
    p.add_argument("path")
    p.add_argument("--key", help="signing key name (default: the only one, or 'default')")
    p.add_argument("--keys-dir", help="where signing keys live")

    p = verb("verify-signature", cmd_verify_signature,
             "check a plugin directory's or archive's signature (exit 4 unless signed and intact)")
    p.add_argument("path")
