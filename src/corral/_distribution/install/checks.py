"""What a planned generation must pass before the switch: signatures, sources, permissions, deps.

Also the permission review an install or update shows (what a new version
adds), and :func:`verify_installed`, the same checks over what is installed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, final

from corral._distribution.install.store import Store, tree_files
from corral._distribution.signing import verify_directory
from corral._distribution.trust import TrustStore, check_signature, load_policy
from corral._errors import InvalidPluginError, NotFoundError, PolicyDenied, SignatureInvalid
from corral._model.deps import check_dependencies, check_requires_corral
from corral._model.manifest import Manifest
from corral._model.release import Release, Requirement
from corral._version import __version__

if TYPE_CHECKING:
    from corral._host import Host

__all__ = [
    "SignatureGate",
    "check_set",
    "closure",
    "describe_grants",
    "full_grants",
    "grant_lists",
    "hold_new_dependencies",
    "permission_changes",
    "pin_sources",
    "verify_installed",
]

_STRENGTH: Final = {"none": 0, "limited": 1, "strict": 2}


# -- permissions ------------------------------------------------------------------


def full_grants(manifest: Manifest) -> dict[str, list[str]]:
    """Every grant of ``manifest`` and its isolation: what a plugin new to the home asks for."""
    return {**permission_changes({}, manifest.permissions.to_dict()),
            "isolation": [manifest.sandbox.isolation]}


def grant_lists(table: Mapping[str, Any]) -> dict[str, list[str]]:
    """The grant lists of a raw ``[permissions]`` table, as :meth:`Permissions.to_dict` has them.

    ``[permissions.reasons]`` explains grants and grants nothing: an update
    must not list it as a new permission.
    """
    return {k: list(v) for k, v in table.items()
            if isinstance(v, (list, tuple)) and k != "reasons" and v}


def permission_changes(
    old: Mapping[str, Any], new: Mapping[str, Any],
    old_isolation: str | None = None, new_isolation: str | None = None,
) -> dict[str, list[str]]:
    """Grants ``new`` adds to ``old`` per permission key, and a weaker isolation if any."""
    out: dict[str, list[str]] = {}
    for key in sorted(new):
        added = [g for g in new[key] if g not in old.get(key, ())]
        if added:
            out[key] = added
    if old_isolation and new_isolation and (
        _STRENGTH.get(new_isolation, 2) < _STRENGTH.get(old_isolation, 2)
    ):
        out["isolation"] = [f"{old_isolation} -> {new_isolation}"]
    return out


def describe_grants(perms: Mapping[str, Sequence[str]]) -> str:
    """Grants as one line of text, for a message."""
    return "; ".join(f"{k}: {', '.join(v)}" for k, v in perms.items()) or "no permissions"


def closure(roots: Sequence[str], manifests: Mapping[str, Manifest]) -> set[str]:
    """``roots`` and everything they depend on, directly or not, among ``manifests``."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in manifests:
            continue
        seen.add(pid)
        todo.extend(manifests[pid].dependencies)
    return seen


def hold_new_dependencies(
    old: Mapping[str, Mapping[str, Any]], reqs: Sequence[Requirement],
    wanted: Mapping[str, Mapping[str, Any]], manifests: Mapping[str, Manifest],
) -> None:
    """Refuse an install whose new version of an installed plugin brings a new plugin.

    The user asked for that plugin, not for what its new version pulls in:
    like an update, it waits until its permissions were seen.  ``manifests``
    are those of ``wanted``.

    Raises:
        PolicyDenied: listing each new plugin, its permissions and isolation.
    """
    upgraded = [r.id for r in reqs
                if r.id in old and old[r.id]["sha256"] != wanted[r.id]["sha256"]]
    held: list[dict[str, Any]] = []
    for nid in sorted(p for p in wanted if p not in old and p not in {r.id for r in reqs}):
        by = sorted(p for p in upgraded if nid in closure([p], manifests))
        if by:
            held.append({"id": nid, "version": str(wanted[nid]["version"]), "new": True,
                         "required_by": by, "permissions": full_grants(manifests[nid])})
    if held:
        listed = "; ".join(f"{h['id']} {h['version']} (required by "
                           f"{', '.join(h['required_by'])}: {describe_grants(h['permissions'])})"
                           for h in held)
        raise PolicyDenied(
            f"held: the new version brings plugins new to this home: {listed}; review "
            "their permissions and run again with --accept-permissions to install",
            plugin_id=held[0]["id"], held=held)


# -- sources and signatures ----------------------------------------------------------


def _same_location(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def pin_sources(old: Mapping[str, Mapping[str, Any]],
                wanted: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse to move an installed plugin to another source or signing key.

    A same-named plugin at another source (or signed by another key) is
    how dependency confusion replaces a plugin; it takes an explicit flag.

    Raises:
        PolicyDenied: naming the plugin, both sources and both keys.
    """
    for pid, e in sorted(wanted.items()):
        prev = old.get(pid)
        if prev is None or prev.get("sha256") == e["sha256"]:
            continue
        was, now = str(prev.get("source") or ""), str(e.get("source") or "")
        was_sig, now_sig = prev.get("signature") or {}, e.get("signature") or {}
        was_key, now_key = was_sig.get("keyid"), now_sig.get("keyid")
        was_pub, now_pub = prev.get("publisher"), e.get("publisher")
        if was and not _same_location(was, now):
            problem = f"it was installed from {was}, version {e['version']} comes from {now}"
        elif was_pub and now_pub != was_pub:
            problem = (f"it was published by {was_pub}, version {e['version']} by "
                       f"{now_pub or 'an unknown publisher'}")
        elif was_key and now_key != was_key:
            signed = (f"by key {now_key} ({now_sig.get('signer')})" if now_key
                      else "by no key (unsigned)")
            problem = (f"it was signed by key {was_key} ({was_sig.get('signer')}), "
                       f"version {e['version']} is signed {signed}")
        else:
            continue
        raise PolicyDenied(
            f"{pid} {prev['version']}: {problem}; corral does not switch an installed "
            "plugin to another source or signing key on its own (a same-named plugin "
            "elsewhere may be an impostor); run again with --allow-source-change if you "
            "mean it", plugin_id=pid, installed_source=was, offered_source=now,
            installed_keyid=was_key, offered_keyid=now_key, installed_publisher=was_pub,
            offered_publisher=now_pub)


@final
class SignatureGate:
    """Checks trees against the trust store and policy of a home, each digest once.

    One gate serves one operation: it remembers the digests it checked.
    """

    def __init__(self, home: Path, *, allow_unsigned: bool = False) -> None:
        self.home = home
        self.allow_unsigned = allow_unsigned
        self._checked: set[str] = set()

    def check(self, tree: Path, rel: Release, digest: str) -> dict[str, Any]:
        """Verify ``tree`` (of ``rel``, archive ``digest``); its signature record.

        Raises:
            SignatureInvalid: the signature is refused (revoked key, policy, unsigned).
        """
        status = verify_directory(tree, strict=True)
        check_signature(
            status, plugin_id=rel.id, version=rel.version, trust=TrustStore(self.home),
            publisher_verified=rel.publisher_verified, allow_unsigned=self.allow_unsigned,
            policy=load_policy(self.home),
        )
        self._checked.add(digest)
        return {"state": status.state, "keyid": status.keyid, "signer": status.signer}

    def admit(self, wanted: Mapping[str, Mapping[str, Any]],
              before: Mapping[str, Mapping[str, Any]], store: Store, lock_path: Path,
              *, every: bool = False) -> None:
        """Check each plugin entering the new generation against today's trust store and policy.

        A plugin enters when its digest differs from ``before`` (all of them
        with ``every``).  Trees checked as they entered the store in this
        operation are not checked twice.  The tree must still match its record.

        Raises:
            SignatureInvalid: a tree no longer matches its record, or the
                signature is refused (a revoked key, a stricter policy, unsigned).
        """
        for pid, e in sorted(wanted.items()):
            sha = str(e["sha256"])
            if sha in self._checked or (
                not every and before.get(pid, {}).get("sha256") == sha
            ):
                continue
            tree, record = store.tree(sha), store.record(sha)
            if not tree.is_dir() or record is None:
                raise NotFoundError(f"{pid} {e['version']}: store tree {tree} is gone; "
                                    "install it again", plugin_id=pid)
            if not store.matches(sha, tree, record):
                raise SignatureInvalid(
                    f"{pid} {e['version']}: the files of {tree} no longer match its record "
                    f"{sha}.json; repair it with corral install --from {lock_path} "
                    "--source ...", plugin_id=pid, file=str(tree))
            self.check(tree, Release(
                pid, str(e["version"]), sha256=sha,
                publisher_verified=bool(record.get("publisher_verified"))), sha)


def verify_installed(pid: str, entry: Mapping[str, Any], store: Store,
                     trust: TrustStore) -> dict[str, Any]:
    """One installed plugin's files against its store record, and its signature again."""
    out: dict[str, Any] = {"id": pid, "version": entry["version"], "sha256": entry["sha256"]}
    tree = store.tree(entry["sha256"])
    record = store.record(entry["sha256"])
    if not tree.is_dir() or record is None:
        return {**out, "state": "missing", "problems": [f"{tree} is gone"]}
    want: dict[str, str] = record["files"]
    have = tree_files(tree)
    problems = [f"{f}: modified" for f in sorted(want) if f in have and have[f] != want[f]]
    problems += [f"{f}: removed" for f in sorted(set(want) - set(have))]
    problems += [f"{f}: added" for f in sorted(set(have) - set(want))]
    status = verify_directory(tree, strict=True)
    signature = {"state": status.state, "keyid": status.keyid, "signer": status.signer}
    recorded = (entry.get("signature") or {}).get("state", "unsigned")
    if status.state in ("modified", "invalid") or status.state != recorded:
        problems += [f"signature: {p}" for p in status.problems] or [
            f"signature: {status.state} (was {recorded})"]
    state = "modified" if problems else "ok"
    if status.state == "signed" and status.keyid and trust.state(status.keyid) == "revoked":
        problems.append(f"signature: key {status.keyid} ({status.signer}) is revoked")
        state = "revoked" if state == "ok" else state
    return {**out, "state": state, "problems": problems, "signature": signature}


# -- the new set as a whole ------------------------------------------------------------


def check_set(host: Host, wanted: Mapping[str, Mapping[str, Any]], store: Store) -> None:
    """Host version, dependency ranges, hand-registered plugins and grants, over the new set."""
    for pid, e in wanted.items():
        if not store.tree(e["sha256"]).is_dir():
            raise NotFoundError(
                f"{pid} {e['version']}: store tree {store.tree(e['sha256'])} is gone; "
                "install it again", plugin_id=pid,
            )
    manifests = store.manifests(wanted)
    by_hand: dict[str, Manifest] = {}
    for info in host.list(discovered=False):
        if info.source == "installed":
            continue
        if info.id in wanted:
            raise InvalidPluginError(
                f"{info.id} is registered by hand (corral add) from {info.path}; "
                f"remove it before installing it", plugin_id=info.id, path=info.path,
            )
        by_hand[info.id] = Manifest.from_dict(info.manifest)
    known = {**by_hand, **manifests}
    for m in manifests.values():
        check_requires_corral(m, __version__)
        host.check_grants(m)
        check_dependencies(m, known)
    for m in by_hand.values():
        if any(dep in manifests or dep not in by_hand for dep in m.dependencies):
            check_dependencies(m, known)
