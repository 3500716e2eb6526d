"""The registry's verbs: ``corral registry ...`` (server side) and the client verbs.

- :func:`registry_main` handles ``corral registry serve|seed|admin|tuf|trust ...``;
- :func:`client_main` handles ``corral search|show|publish|download|yank|unyank``.

Both return the exit code and run under :func:`corral._cli.output.run`, like
every verb.  The registry's own modules pull in FastAPI, SQLAlchemy or httpx,
so they are imported only by the verb that needs them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from corral._cli.output import Parser, dump, last_column_width, run, shorten
from corral._errors import SignatureInvalid, UsageError
from corral._model.text import neutralise
from corral.registry._workers import PARENT_ENV

__all__ = ["client_main", "registry_main"]


def _storage_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="registry directory (registry.db, artifacts/)")
    p.add_argument("--db", help="database URL (postgresql://...); default SQLite in --data")


def _open(args: argparse.Namespace) -> Any:
    from corral.registry._service import Registry

    return Registry.open(args.data, args.db, max_upload_bytes=args.max_upload_mb * 1024 * 1024
                         if getattr(args, "max_upload_mb", None) else 50 * 1024 * 1024)


def _registry_parser() -> Parser:
    p = Parser(prog="corral registry", description="run and administer a plugin registry")
    sub = p.add_subparsers(dest="cmd", parser_class=Parser)
    sp = sub.add_parser("serve", help="serve the HTTP API")
    _storage_args(sp)
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=8470)
    sp.add_argument("--max-upload-mb", type=int, default=50)
    sp.add_argument("--workers", type=int, default=None,
                    help="server processes, all sharing the database "
                         "(default: one per CPU core)")
    sp = sub.add_parser("seed", help="load a catalogue TSV and/or co-usage sets (TSV)")
    _storage_args(sp)
    sp.add_argument("--catalogue", type=Path)
    sp.add_argument("--cousage", type=Path,
                    help="sets of plugins used together (repo, family, source_path, plugins)")
    sp.add_argument("--limit", type=int)
    sp.add_argument("--json", action="store_true")
    ap = sub.add_parser("admin", help="publishers, namespaces, tokens")
    asub = ap.add_subparsers(dest="what", parser_class=Parser)

    def admin(name: str, help_: str) -> argparse.ArgumentParser:
        a = asub.add_parser(name, help=help_)
        _storage_args(a)
        a.add_argument("--json", action="store_true")
        return a

    a = admin("create-publisher", "create a publisher account")
    a.add_argument("name")
    a.add_argument("--email")
    a.add_argument("--display-name", default="")
    a.add_argument("--verified", action="store_true")
    a = admin("verify-publisher", "mark a publisher verified")
    a.add_argument("name")
    a.add_argument("--unverify", action="store_true")
    a = admin("create-namespace", "create a namespace owned by a publisher")
    a.add_argument("name")
    a.add_argument("--owner", required=True)
    a = admin("add-member", "give a publisher a role in a namespace")
    a.add_argument("namespace")
    a.add_argument("publisher")
    a.add_argument("--role", default="maintainer", choices=["owner", "maintainer"])
    a = admin("create-token", "issue an API token (printed once)")
    a.add_argument("publisher")
    a.add_argument("--scope", action="append", choices=["publish", "yank", "admin"])
    a.add_argument("--expires-days", type=float, default=90.0,
                   help="days until it expires; 0 for never")
    a.add_argument("--description", default="")
    a = admin("revoke-token", "revoke a token by its id (crl_<id>_...)")
    a.add_argument("token_id")
    a = admin("add-key", "register a publisher's signing key (base64, PEM or a .pub file)")
    a.add_argument("publisher")
    a.add_argument("key")
    a = admin("revoke-key", "revoke a publisher's signing key by its id")
    a.add_argument("publisher")
    a.add_argument("keyid")
    a = admin("make-moderator", "let a user moderate: the queue, hide, quarantine, ban")
    a.add_argument("name")
    a.add_argument("--revoke", action="store_true", help="take moderation away again")
    a = admin("link-user", "let a user act for a publisher (replies, answers)")
    a.add_argument("name")
    a.add_argument("publisher")
    _tuf_parsers(sub)
    return p


def _tuf_parsers(sub: Any) -> None:
    """``corral registry tuf ...`` (the key ceremony) and ``corral registry trust``."""
    tp = sub.add_parser("tuf", help="TUF metadata: init, rotate-root, rotate-online, refresh")
    tsub = tp.add_subparsers(dest="what", parser_class=Parser)

    def tuf(name: str, help_: str) -> argparse.ArgumentParser:
        t: argparse.ArgumentParser = tsub.add_parser(name, help=help_)
        _storage_args(t)
        t.add_argument("--json", action="store_true")
        return t

    t = tuf("init", "create TUF keys and metadata (root/targets keys go to --offline-keys)")
    t.add_argument("--offline-keys", required=True, type=Path)
    t.add_argument("--bins", type=int, default=16, help="hash bins (a power of two)")
    t.add_argument("--root-keys", type=int, default=1)
    t.add_argument("--root-threshold", type=int, default=1)
    t.add_argument("--expiry", action="append", metavar="ROLE=DAYS")
    t = tuf("rotate-root", "root N+1 with new keys, signed by the old and the new")
    t.add_argument("--offline-keys", required=True, type=Path, help="the current root keys")
    t.add_argument("--new-keys", required=True, type=Path, help="new root keys (made if none)")
    t.add_argument("--threshold", type=int)
    t = tuf("rotate-online", "new snapshot/timestamp/bins keys (needs the offline keys)")
    t.add_argument("--offline-keys", required=True, type=Path)
    t = tuf("refresh", "re-sign timestamp/snapshot/bins past half their lifetime")
    t.add_argument("--force", action="store_true")
    tuf("sync", "rebuild every plugin's TUF targets from the catalogue")
    t = sub.add_parser("trust", help="trust a registry's TUF root (client side)")
    t.add_argument("url")
    t.add_argument("--root", required=True, type=Path, help="the registry's root.json")
    t.add_argument("--home", help="corral home (default $CORRAL_HOME)")
    _storage_args(t)
    t.add_argument("--json", action="store_true")


def _tuf_main(args: argparse.Namespace) -> int:
    doc: dict[str, Any]
    if args.cmd == "trust":
        from corral._distribution.registry_source import trust_registry

        home = args.home or os.environ.get("CORRAL_HOME") or (
            str(Path(args.data).parent) if args.data else None)
        if home is None:
            from corral._disk.layout import default_home

            home = str(default_home())
        try:
            root = args.root.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {args.root}: {exc}", file=str(args.root)) from exc
        doc = trust_registry(Path(home), args.url, root)
    else:

        doc = _tuf_command(args)
    if args.json:
        dump(doc, indent=2)
    else:
        print(" ".join(f"{k}={v}" for k, v in doc.items()))
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from corral.registry._app import create_app

    registry = _open(args)
    # before any request: sweep crashed uploads' temp files, sign what a crash left unsigned
    repaired = registry.housekeep()
    if repaired["signed"] or repaired["swept"]:
        print(f"corral registry: signed {len(repaired['signed'])} plugin(s) left unsigned, "
              f"swept {repaired['swept']} temp file(s)", file=sys.stderr)
    print(f"corral registry on http://{args.host}:{args.port} "
          f"({registry.engine.dialect.name})", file=sys.stderr)
    workers = args.workers or os.cpu_count() or 1
    if workers > 1:
        # the workers open the directory this process opened ($CORRAL_REGISTRY_DATA included)
        os.environ["CORRAL_REGISTRY_DATA"] = (str(Path(registry.data_dir).absolute())
                                              if registry.data_dir is not None else "")
        os.environ["CORRAL_REGISTRY_MAX_UPLOAD"] = str(registry.max_upload_bytes)
        os.environ[PARENT_ENV] = str(os.getpid())
        if args.db:
            os.environ["CORRAL_REGISTRY_DB"] = args.db
        registry.close()
        uvicorn.run("corral.registry._app:app_from_env", factory=True, host=args.host,
                    port=args.port, workers=workers, log_level="warning",
                    http="corral.registry._app:NoDelayH11Protocol")
        return 0
    registry.start_housekeeping()
    app = create_app(registry)
    app.state.insights.start_warming()  # the recommender, built before the first request
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                http="corral.registry._app:NoDelayH11Protocol")
    return 0


def _admin(args: argparse.Namespace) -> int:
    if not args.what:
        raise UsageError("corral registry admin needs a command (see --help)")
    doc: dict[str, Any]
    with _open(args) as reg:
        if args.what == "create-publisher":
            reg.create_publisher(args.name, email=args.email, display_name=args.display_name,
                                 verified=args.verified)
            doc = {"publisher": args.name, "verified": args.verified}
        elif args.what == "verify-publisher":
            reg.verify_publisher(args.name, not args.unverify)
            doc = {"publisher": args.name, "verified": not args.unverify}
        elif args.what == "create-namespace":
            reg.create_namespace(args.name, args.owner)
            doc = {"namespace": args.name, "owner": args.owner}
        elif args.what == "add-member":
            reg.add_member(args.namespace, args.publisher, args.role)
            doc = {"namespace": args.namespace, "publisher": args.publisher, "role": args.role}
        elif args.what == "create-token":
            expires = None if args.expires_days <= 0 else dt.timedelta(days=args.expires_days)
            token = reg.create_token(args.publisher, scopes=tuple(args.scope or ["publish"]),
                                     expires_in=expires, description=args.description)
            doc = {"token": token, "publisher": args.publisher,
                   "scopes": sorted(set(args.scope or ["publish"]))}
        elif args.what == "add-key":
            key_text = args.key
            if not key_text.lstrip().startswith("-----") and Path(key_text).is_file():
                key_text = Path(key_text).read_text()
            doc = {"publisher": args.publisher, **reg.add_publisher_key(args.publisher, key_text)}
        elif args.what == "revoke-key":
            doc = {"publisher": args.publisher,
                   **reg.revoke_publisher_key(args.publisher, args.keyid)}
        elif args.what in ("make-moderator", "link-user"):
            from corral.registry._community.service import Community

            if args.what == "make-moderator":
                user = Community(reg).set_admin(args.name, not args.revoke)
            else:
                user = Community(reg).link_publisher_by_name(args.name, args.publisher)
            doc = {"user": user.name, "is_admin": user.is_admin,
                   "publishers": ",".join(user.publishers)}
        else:
            token_id = args.token_id.split("_")[1] if args.token_id.startswith("crl_") \
                else args.token_id
            reg.revoke_token(token_id)
            doc = {"revoked": token_id}
    if args.json:
        dump(doc, indent=2)
    elif "token" in doc:
        print(doc["token"])
    else:
        print(" ".join(f"{k}={v}" for k, v in doc.items()))
    return 0


def _seed(args: argparse.Namespace) -> int:
    from corral.registry._insights.recommendations import seed_cousage
    from corral.registry._seed import seed

    if args.catalogue is None and args.cousage is None:
        raise UsageError("corral registry seed needs --catalogue FILE and/or --cousage FILE")
    counts: dict[str, Any] = {}
    with _open(args) as reg:
        if args.catalogue is not None:
            counts.update(seed(reg, args.catalogue, args.limit))
        if args.cousage is not None:
            counts["cousage"] = seed_cousage(reg.engine, args.cousage)
    if args.json:
        dump(counts, indent=2)
        return 0
    if args.catalogue is not None:
        print(f"added {counts['added']} plugins, skipped {counts['skipped']} "
              f"already present, {counts['invalid']} invalid names")
    if args.cousage is not None:
        print(f"added {counts['cousage']['added']} co-usage sets, skipped "
              f"{counts['cousage']['skipped']} already present")
    return 0


def registry_main(argv: Sequence[str] | None = None) -> int:
    """``corral registry serve|seed|admin ...``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv

    def verb_run() -> int:
        args = _registry_parser().parse_args(argv)
        if args.cmd == "serve":
            return _serve(args)
        if args.cmd == "seed":
            return _seed(args)
        if args.cmd == "admin":
            return _admin(args)
        if args.cmd in ("tuf", "trust"):
            return _tuf_main(args)
        raise UsageError("corral registry needs a command: serve, seed or admin")

    return run(verb_run, as_json, source="registry", indent=2)


def _client_parser(verb: str) -> Parser:
    p = Parser(prog=f"corral {verb}")
    p.add_argument("--registry", help="registry URL (default $CORRAL_REGISTRY)")
    # install/update call the same URL --source: the other spelling works, unlisted
    p.add_argument("--source", dest="registry", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true")
    if verb == "search":
        p.add_argument("query", nargs="*")
        p.add_argument("--category")
        p.add_argument("--tag")
        p.add_argument("--author")
        p.add_argument("--min-rating", type=float)
        p.add_argument("--verified", action="store_true", default=None)
        p.add_argument("--sort", default="relevance",
                       choices=["relevance", "downloads", "rating", "updated"])
        p.add_argument("--page", type=int, default=1)
        p.add_argument("--per-page", "--limit", dest="per_page", type=int, default=20)
    elif verb == "show":
        p.add_argument("id")
    elif verb == "publish":
        p.add_argument("archive", type=Path, metavar="PATH",
                       help="a plugin directory (validated, packed and signed first) "
                            "or a .corral archive (uploaded as it is)")
        p.add_argument("--key", default=None,
                       help="signing key name in the keys directory ($CORRAL_KEYS_DIR); "
                            "directories only")
        p.add_argument("--no-sign", action="store_true",
                       help="do not sign, even if a key exists (directories only)")
        p.add_argument("-o", "--output", type=Path, default=None,
                       help="keep the packed archive here (a file or a directory); "
                            "default: a temporary file, deleted after the upload")
    elif verb == "download":
        p.add_argument("id")
        p.add_argument("--version")
        p.add_argument("--dest", default=".",
                       help="a file to write, or a folder to write into (an existing one, "
                            "or one named with a trailing /); default: the current folder")
    elif verb in ("yank", "unyank"):
        p.add_argument("id")
        p.add_argument("version")
        if verb == "yank":
            p.add_argument("--reason", default="")
    else:
        raise UsageError(f"unknown registry verb {verb!r}")
    return p


def _download_dest(dest: str) -> Path:
    """Where ``--dest`` sends the archive: a trailing slash names a folder (made if need be)."""
    path = Path(dest)
    if dest.endswith(("/", os.sep)):
        path.mkdir(parents=True, exist_ok=True)
    return path


def _yank_line(verb: str, args: argparse.Namespace, doc: dict[str, Any]) -> str:
    """One line saying what ``yank``/``unyank`` did (``--json`` prints the registry's document)."""
    line = f"{verb}ed {args.id} {doc.get('version') or args.version}"
    reason = doc.get("yanked_reason") or getattr(args, "reason", "")
    if verb == "yank" and reason:
        line += f" ({reason})"
    return neutralise(line, one_line=True)


def _print_results(doc: dict[str, Any]) -> None:
    results = doc.get("results", [])
    if not results:
        print("no plugins found")
        return
    rows = [[neutralise(c, one_line=True) for c in (
                r["id"], r.get("version") or "", f"{r.get('downloads', 0):,}",
                ("✓ " if r.get("verified") else "") + (r.get("summary") or ""))]
            for r in results]  # what a registry says is as hostile as what a plugin says
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    room = last_column_width(sum(widths) + 6)
    for row in rows:
        print("  ".join(c.ljust(widths[i]) for i, c in enumerate(row[:3])) + "  "
              + shorten(row[3], room))
    print(f"({len(results)} of {doc.get('total', len(results))})")


def _publish_directory(reg: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Validate, pack (signed with the configured key) and upload a plugin directory.

    Nothing is uploaded when the plugin is invalid (InvalidPluginError, exit 3,
    with every error in ``details["errors"]``); the archive is packed into a
    temporary directory unless ``--output`` keeps it.
    """
    import tempfile

    from corral._errors import InvalidPluginError
    from corral._pdk.pack import pack_plugin

    with tempfile.TemporaryDirectory(prefix="corral-publish-") as tmp:
        try:
            packed = pack_plugin(args.archive, args.output or tmp, key=args.key,
                                 sign=not args.no_sign)
        except InvalidPluginError as exc:
            if not args.json:
                for error in exc.details.get("errors") or []:
                    where = error.get("file") or "corral.toml"
                    line = f":{error['line']}" if error.get("line") else ""
                    text = f"{where}{line}: {error.get('rule', 'error')}: {error['message']}"
                    print(neutralise(text, args.archive.name), file=sys.stderr)
            raise
        published: dict[str, Any] = reg.publish(Path(packed["path"]))
    signature = {"state": "signed" if packed["signed"] else "unsigned",
                 "signer": packed["signer"], "keyid": packed["keyid"]}
    if published.get("sha256") not in (None, packed["sha256"]):
        raise SignatureInvalid(f"{packed['plugin']} {packed['version']}: the registry stored "
                               f"sha256 {published['sha256']}, but {packed['sha256']} was "
                               "uploaded", plugin_id=packed["plugin"])
    return {**published, "id": packed["plugin"], "version": packed["version"],
            "sha256": packed["sha256"], "size": packed["size"], "signature": signature,
            "archive": packed["path"] if args.output is not None else None,
            "validation_warnings": packed["warnings"]}


def _print_published(doc: dict[str, Any]) -> None:
    sig = doc["signature"]
    signed = (f"signed by {sig['signer']} ({sig['keyid'][:16]})" if sig["state"] == "signed"
              else "unsigned")
    print(f"published {doc['id']} {doc['version']}")
    print(f"  sha256 {doc['sha256']}  {doc['size']} bytes  {signed}")
    if doc.get("archive"):
        print(f"  archive kept at {doc['archive']}")
    for w in [*doc.get("validation_warnings", []), *doc.get("warnings", [])]:
        print(f"  warning: {neutralise(w.get('message', w), 'registry')}", file=sys.stderr)


def client_main(verb: str, argv: Sequence[str]) -> int:
    """``corral search|show|publish|download|yank|unyank ...``; returns the exit code.

    The token for publish and yank comes from ``$CORRAL_TOKEN``.  ``publish DIR``
    validates, packs and signs a plugin directory first; ``publish FILE`` uploads
    an archive as it is.
    """
    argv = list(argv)
    as_json = "--json" in argv

    def verb_run() -> int:
        from corral.registry.client import RegistryClient

        args = _client_parser(verb).parse_args(argv)
        token = os.environ.get("CORRAL_TOKEN") or None
        with RegistryClient(args.registry, token) as reg:
            doc: dict[str, Any]
            if verb == "search":
                doc = reg.search(" ".join(args.query), category=args.category, tag=args.tag,
                                 author=args.author, min_rating=args.min_rating,
                                 verified=args.verified, sort=args.sort, page=args.page,
                                 per_page=args.per_page)
                if not args.json:
                    _print_results(doc)
                    return 0
            elif verb == "show":
                doc = reg.show(args.id)
                if not args.json:
                    one = {k: neutralise(doc.get(k) or "", one_line=True)
                           for k in ("id", "version", "name", "summary", "publisher")}
                    print(f"{one['id']} {one['version'] or '(all yanked)'} — {one['name']}")
                    print(f"  {one['summary']}")
                    print(f"  publisher {one['publisher']}"
                          f"{' (verified)' if doc.get('verified') else ''}, "
                          f"{doc['downloads']:,} downloads, rating {doc['rating']}")
                    for v in doc["versions"]:
                        flag = " yanked" if v["yanked"] else ""
                        print(neutralise(f"  {v['version']}{flag}  {v['sha256'] or '(no archive)'}",
                                         one_line=True))
                    return 0
            elif verb == "publish":
                if not token:
                    raise UsageError("publishing needs a token in $CORRAL_TOKEN")
                if args.archive.is_dir():
                    doc = _publish_directory(reg, args)
                    if not args.json:
                        _print_published(doc)
                        return 0
                else:
                    if args.key is not None or args.no_sign or args.output is not None:
                        raise UsageError("--key, --no-sign and --output apply to a plugin "
                                         f"directory; {args.archive} is an archive")
                    doc = reg.publish(args.archive)
            elif verb == "download":
                path = reg.download(args.id, _download_dest(args.dest), args.version)
                doc = {"id": args.id, "path": str(path)}
            elif verb == "yank":
                doc = reg.yank(args.id, args.version, args.reason)
            else:
                doc = reg.unyank(args.id, args.version)
        if args.json or verb == "publish":
            dump(doc, indent=2)
        elif verb == "download":
            print(doc["path"])
        else:
            print(_yank_line(verb, args, doc))
        return 0

    return run(verb_run, as_json, source="registry", indent=2)


def _tuf_command(args: Any) -> dict[str, Any]:
    """``corral registry tuf init|rotate-root|rotate-online|refresh|sync``; a JSON-ready result."""
    from corral.registry._service import Registry, default_data_dir
    from corral.registry._tuf import TufRepository

    data = Path(args.data).expanduser() if args.data else default_data_dir()
    what = args.what
    if what == "init":
        expiry = {}
        for item in args.expiry or []:
            role, eq, days = item.partition("=")
            if not eq or not days.isdigit():
                raise UsageError(f"--expiry {item!r}: expected ROLE=DAYS", field="expiry")
            expiry[role] = int(days)
        with Registry.open(data, args.db) as reg:
            repo = TufRepository.initialise(
                reg, data, Path(args.offline_keys), bins=args.bins, root_keys=args.root_keys,
                root_threshold=args.root_threshold, expiry=expiry or None)
            return {"initialised": str(repo.root_dir), "root": repo.root().signed.version,
                    "offline_keys": str(Path(args.offline_keys).absolute()),
                    "bins": args.bins}
    repo = TufRepository.open(data)
    if what == "rotate-root":
        return {"root": repo.rotate_root(Path(args.offline_keys), Path(args.new_keys),
                                         threshold=args.threshold)}
    if what == "rotate-online":
        return {"root": repo.rotate_online(Path(args.offline_keys))}
    if what == "refresh":
        return {"resigned": repo.refresh(force=args.force)}
    if what == "sync":
        with Registry.open(data, args.db) as reg:
            return {"bins": repo.sync(reg)}
    raise UsageError("corral registry tuf needs: init, rotate-root, rotate-online, refresh "
                     "or sync")
