"""The command line's pack verb: a reproducible, signed .corral archive."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from corral._cli.output import dump

if TYPE_CHECKING:
    from corral._cli.output import VerbAdder

__all__ = ["add_verbs"]

_HELP = (
    "validate a plugin and pack it into a reproducible .corral archive (the same sources "
    "give the same bytes), signed with the configured key unless --no-sign; "
    "default output ./<id>-<version>.corral (next to the plugin when run inside it); "
    "exit 3 when the plugin is invalid"
)


def cmd_pack(args: argparse.Namespace) -> int:
    # Packing pulls in archives, signing and validation: only `corral pack` pays for them.
    from corral._pdk.pack import pack_plugin

    result = pack_plugin(args.path, args.output, key=args.key, sign=not args.no_sign)
    if args.json:
        dump(result)
        return 0
    signed = f"signed by {result['signer']} ({result['keyid'][:16]})" if result["signed"] \
        else "unsigned"
    print(f"packed {result['plugin']} {result['version']} -> {result['path']}")
    print(f"  sha256 {result['sha256']}  {result['size']} bytes  {signed}")
    return 0


def add_verbs(verb: VerbAdder) -> None:
    """Register ``pack``."""
    sp = verb("pack", cmd_pack, _HELP)
    sp.add_argument("path", nargs="?", default=".", help="the plugin directory (default: .)")
    sp.add_argument("-o", "--output", default=None,
                    help="a folder for <id>-<version>.corral (existing, or ending in '/' "
                    "to create it), or an archive file name ending in .corral")
    sp.add_argument("--key", default=None,
                    help="signing key name in the keys directory ($CORRAL_KEYS_DIR)")
    sp.add_argument("--no-sign", action="store_true", help="do not sign, even if a key exists")
