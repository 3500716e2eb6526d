"""The atomic installer: a content-addressed store, numbered generations and ``corral.lock``.

An operation (install, uninstall, update, rollback) runs under ``<home>/install.lock``:

1. repair: make the host database follow ``corral.lock`` (a crash between the
   switch and the database update is finished here), drop half-written files;
2. plan: resolve versions against a :class:`~corral._model.release.Source`;
3. fetch each new archive, check its sha256, extract it, check its signature
   and policy, seal it read-only and rename it into ``<home>/store/<sha256>/``;
4. check the whole new set (host version, dependency ranges, hand-registered
   plugins), run an update's ``self-test`` export in a throwaway host;
5. switch: write ``generations/<N>.json``, then rename ``corral.lock`` (one
   atomic step), then re-point the host database.

Any failure before step 5 leaves the previous generation exactly as it was:
new store trees are removed, the lock and the database are untouched.
This module orchestrates; the sibling modules do the work of each step:
``store`` (3), ``checks`` (3, 4), ``update`` and ``selftest`` (2, 4), ``generations`` (5).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, final

from corral._disk.files import exclusive
from corral._distribution.install.checks import (
    SignatureGate,
    check_set,
    closure,
    full_grants,
    hold_new_dependencies,
    permission_changes,
    pin_sources,
    verify_installed,
)
from corral._distribution.install.generations import (
    Generation,
    Generations,
    Plugins,
    diff_plugins,
    read_lock,
    sync_filesystem,
)
from corral._distribution.install.results import Change, UpdateResult
from corral._distribution.install.selftest import run_self_test
from corral._distribution.install.sources import (
    DirectorySource,
    Offline,
    need_source,
    open_source,
)
from corral._distribution.install.store import Progress, Store, no_space, remove_tree
from corral._distribution.install.update import (
    available_updates,
    avoid_failed,
    hold_back,
    pin_held,
    recorded_source,
    resolve_plan,
    skipped_versions,
)
from corral._distribution.trust import TrustStore
from corral._errors import (
    CorralError,
    LifecycleError,
    NotFoundError,
    PluginError,
    SignatureInvalid,
    UnavailableError,
    UsageError,
)
from corral._host import Host
from corral._model.release import Release, Requirement, Source, parse_requirement

__all__ = [
    "Change",
    "DirectorySource",
    "Installer",
    "Progress",
    "UpdateResult",
    "full_grants",
    "open_source",
    "permission_changes",
]

@final
class Installer:
    """Installs, updates, uninstalls and rolls back plugins of one home, atomically.

    ``source`` is where releases come from (not needed for uninstall, rollback,
    history or verify).  ``host`` is re-pointed after each switch; without one a
    :class:`~corral._host.Host` is opened for the operation.
    """

    def __init__(
        self,
        home: str | os.PathLike[str],
        source: Source | None = None,
        *,
        allow_unsigned: bool = False,
        progress: Progress | None = None,
        host: Host | None = None,
    ) -> None:
        self.home = Path(home).expanduser().absolute()
        self.source = source
        self.allow_unsigned = allow_unsigned
        self.progress = progress
        self._host = host
        self._store = Store(self.home)
        self._generations = Generations(self.home)
        self.store_dir = self._store.dir
        self.generations_dir = self._generations.dir
        self.lock_path = self._generations.lock_path
        # the signature checks of the running operation (a fresh gate for each)
        self._gate = SignatureGate(self.home, allow_unsigned=allow_unsigned)

    # -- reading --------------------------------------------------------------

    def current(self) -> Generation | None:
        """The current generation (what ``corral.lock`` says), or ``None``."""
        return self._generations.current()

    def generation(self, number: int) -> Generation:
        """Generation ``number`` from ``generations/<N>.json``."""
        return self._generations.get(number)

    def tree(self, sha256: str) -> Path:
        """The store folder of the archive with this digest."""
        return self._store.tree(sha256)

    def history(self) -> list[dict[str, Any]]:
        """Generations newest first, each with what changed from its parent."""
        return self._generations.history()

    def verify(self) -> list[dict[str, Any]]:
        """Re-check every installed plugin's files against its store record and signature.

        Each result has ``state``: ``ok``, ``modified`` (files changed, added or
        removed, or the signature no longer verifies), ``revoked`` (signed by a
        key the trust store now revokes) or ``missing``.
        """
        with self._operation():
            cur = self.current()
            trust = TrustStore(self.home)
            return [verify_installed(pid, entry, self._store, trust)
                    for pid, entry in sorted((cur.plugins if cur else {}).items())]

    # -- the operation frame ----------------------------------------------------

    @contextlib.contextmanager
    def _operation(self) -> Iterator[Host]:
        """Take the install lock, repair what a crash left, yield the host to re-point."""
        for folder in (self.home, self.store_dir, self.generations_dir):
            folder.mkdir(parents=True, exist_ok=True)
        with exclusive(self.home / "install.lock", mode=0o644):
            host = self._host if self._host is not None else Host(home=self.home)
            self._gate = SignatureGate(self.home, allow_unsigned=self.allow_unsigned)
            try:
                self._store.begin()
                cur = self.current()
                if cur is not None:
                    self._generations.drop_after(cur.number)
                self._reconcile(host, cur)
                yield host
            finally:
                if self._host is None:
                    host.close()

    def _reconcile(self, host: Host, gen: Generation | None) -> None:
        plugins = {} if gen is None else {
            pid: self.tree(e["sha256"]) for pid, e in gen.plugins.items()
        }
        host.adopt_installed(plugins)

    # -- install ----------------------------------------------------------------

    def install(
        self, requirements: Sequence[str | Requirement] = (), *,
        from_lock: str | os.PathLike[str] | None = None,
        enable: bool = False,
        accept_permissions: bool = False,
        allow_source_change: bool = False,
    ) -> Change:
        """Install plugins (``ID``, ``ID@1.2``, ``ID@>=1,<2``) with their dependencies.

        ``from_lock`` installs exactly the versions and hashes of a ``corral.lock``
        (a different hash at the source raises :class:`SignatureInvalid`).
        ``enable`` also enables what was asked for (dependencies first); a plugin
        that fails to start rolls the install back, as a failed update does.

        Raises:
            PolicyDenied: a new version of an installed plugin brings a plugin
                new to the home (unless ``accept_permissions``: review its
                permissions first), or an installed plugin would change source
                or signing key (unless ``allow_source_change``).
        """
        reqs = [parse_requirement(r) if isinstance(r, str) else r for r in requirements]
        if not reqs and from_lock is None:
            raise UsageError("install needs ID[@SPEC]... or --from corral.lock")
        with self._operation() as host:
            cur = self.current()
            old = dict(cur.plugins) if cur else {}
            created: list[Path] = []
            try:
                if from_lock is not None:
                    wanted = self._from_lock(Path(from_lock), created)
                    action = f"install --from {from_lock}"
                else:
                    wanted = self._plan_install(old, reqs, created)
                    action = "install " + " ".join(str(r) for r in reqs)
                    if not accept_permissions:
                        hold_new_dependencies(old, reqs, wanted, self._store.manifests(wanted))
                self._gate.admit(wanted, old, self._store, self.lock_path)
                if from_lock is None and not allow_source_change:
                    pin_sources(old, wanted)
                check_set(host, wanted, self._store)
                change = self._commit(host, cur, wanted, action, created)
            except BaseException:
                for path in created:
                    remove_tree(path)
                raise
            if enable:
                try:
                    for r in reqs:
                        host.enable(r.id)
                except CorralError as exc:
                    self._roll_back_failed(host, cur, [], exc, old, wanted)
                    raise
            if not self._store.repairs:
                return change
            return Change(change.generation, change.action, change.changed,
                          {**change.changes, "repaired": list(self._store.repairs)})

    def _plan_install(
        self, old: Plugins, reqs: Sequence[Requirement], created: list[Path],
    ) -> dict[str, dict[str, Any]]:
        source = need_source(self.source)
        specs = {pid: str(e.get("spec", "")) for pid, e in old.items() if e.get("requested")}
        for r in reqs:
            specs[r.id] = r.spec
        asked = {r.id for r in reqs}
        locked = {pid: str(e["version"]) for pid, e in old.items() if pid not in asked}
        releases = resolve_plan([Requirement(p, s) for p, s in specs.items()], source,
                                locked=locked, upgrade=sorted(asked))
        return self._materialise(releases, source, old, specs, created)

    def _from_lock(self, path: Path, created: list[Path]) -> dict[str, dict[str, Any]]:
        lock = read_lock(path)
        if lock is None:
            raise NotFoundError(f"{path}: no such lock file", file=str(path))
        sources: dict[str, Source] = {}
        releases: dict[str, Release] = {}
        by_source: dict[str, Source] = {}
        for pid, entry in lock.plugins.items():
            if self._store.stored(Release(pid, entry["version"], sha256=entry["sha256"])):
                releases[pid] = Release(pid, entry["version"], sha256=entry["sha256"])
                by_source[pid] = self.source or Offline(str(entry.get("source", "")))
                continue
            source = self.source
            if source is None:
                loc = str(entry.get("source", ""))
                if not loc:
                    raise UsageError(f"{path}: {pid} has no source; pass --source")
                source = sources.setdefault(loc, open_source(loc, self.home))
            match = [r for r in source.releases(pid) if r.version == entry["version"]]
            if not match:
                raise NotFoundError(
                    f"{pid} {entry['version']} (pinned by {path}) is not in {source.location}",
                    plugin_id=pid,
                )
            good = [r for r in match if r.sha256 == entry["sha256"]]
            if not good:
                raise SignatureInvalid(
                    f"{pid} {entry['version']}: {source.location} offers sha256 "
                    f"{match[0].sha256}, {path} pins {entry['sha256']}",
                    plugin_id=pid, file=str(path),
                )
            releases[pid] = good[0]
            by_source[pid] = source
        out: dict[str, dict[str, Any]] = {}
        for pid, rel in releases.items():
            entry = lock.plugins[pid]
            spec = {pid: str(entry.get("spec", ""))} if entry.get("requested") else {}
            out.update(self._materialise({pid: rel}, by_source[pid], {}, spec, created))
        return out


    def _materialise(
        self,
        releases: Mapping[str, Release],
        source: Source,
        old: Plugins,
        specs: Mapping[str, str],
        created: list[Path],
    ) -> dict[str, dict[str, Any]]:
        """Put every release in the store (fetching what is missing); the new plugin entries."""
        out: dict[str, dict[str, Any]] = {}
        todo = [r for r in releases.values() if not self._store.stored(r)]
        self._store.put(todo, source, created, self._gate.check, self.progress)
        for pid, rel in releases.items():
            assert rel.sha256 is not None
            record = self._store.record(rel.sha256) or {}
            prev = old.get(pid, {})
            same = prev.get("sha256") == rel.sha256
            out[pid] = {
                "version": rel.version,
                "sha256": rel.sha256,
                "source": prev.get("source", source.location) if same else source.location,
                "signature": record.get("signature", {"state": "unsigned", "keyid": None,
                                                      "signer": None}),
                "requested": pid in specs,
                "spec": specs.get(pid, ""),
            }
            publisher = prev.get("publisher") if same else rel.publisher
            if publisher:  # the registry account that published it, when the source says
                out[pid]["publisher"] = publisher
        return out

    # -- the switch ---------------------------------------------------------------

    def _commit(
        self,
        host: Host,
        cur: Generation | None,
        plugins: Plugins,
        action: str,
        created: list[Path],
        *,
        force: bool = False,
    ) -> Change:
        old = dict(cur.plugins) if cur else {}
        if cur is not None and not force and _same(old, plugins):
            return Change(cur.number, action, False, diff_plugins(old, old))
        if cur is None and not plugins and not force:
            return Change(0, action, False, diff_plugins({}, {}))
        number = (cur.number if cur else 0) + 1
        gen = Generation(
            number=number,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            action=action,
            parent=cur.number if cur else None,
            plugins={k: dict(v) for k, v in plugins.items()},
        )
        try:
            if created or self._store.repairs:  # new trees, durable before anything uses them
                sync_filesystem(self.store_dir)
            self._generations.switch(gen)
        except OSError as exc:
            if no_space(exc):
                raise UnavailableError(f"no space left on the device of {self.home} "
                                       "(nothing was changed)", reason="no_space") from exc
            raise
        created.clear()  # from here on the new trees belong to a generation
        self._reconcile(host, gen)
        return Change(number, action, True, diff_plugins(old, plugins))

        return Change(number, action, True, diff_plugins(old, plugins))

    # -- uninstall --------------------------------------------------------------

    def uninstall(self, ids: Sequence[str]) -> Change:
        """Remove plugins, and the dependencies nothing else needs any more.

        Raises:
            NotFoundError: an id is not installed.
            LifecycleError: another installed plugin still needs one of them.
        """
        if not ids:
            raise UsageError("uninstall needs at least one plugin id")
        with self._operation() as host:
            cur = self.current()
            old = dict(cur.plugins) if cur else {}
            for pid in ids:
                if pid not in old:
                    raise NotFoundError(f"{pid} is not installed", plugin_id=pid)
            manifests = self._store.manifests(old)
            roots = [p for p, e in old.items() if e.get("requested") and p not in ids]
            keep = closure(roots, manifests)
            needed = {p: sorted(q for q in keep if p in manifests[q].dependencies)
                      for p in ids if p in keep}
            if needed:
                pid, by = next(iter(needed.items()))
                raise LifecycleError(f"cannot uninstall {pid}: needed by {', '.join(by)}",
                                     plugin_id=pid, dependents=by)
            wanted = {p: old[p] for p in sorted(keep)}
            check_set(host, wanted, self._store)
            return self._commit(host, cur, wanted, "uninstall " + " ".join(ids), [])

    # -- rollback ---------------------------------------------------------------

    def rollback(self, to: int | None = None) -> Change:
        """Make a new generation equal to generation ``to``.

        Without ``to``: the nearest ancestor (following ``parent``) that did not
        fail its health check and differs from the current set; the action
        names the failed generations it skipped.  Needs no network: every
        generation's store trees are kept.  Every plugin of the target is
        checked again against today's trust store and policy.

        Raises:
            SignatureInvalid: a plugin of the target is signed by a key revoked
                since (or the policy now refuses it); the message names it.
        """
        with self._operation() as host:
            cur = self.current()
            if cur is None:
                raise UsageError("nothing is installed; there is nothing to roll back")
            skipped: list[int] = []
            target = self._rollback_target(cur, skipped) if to is None else to
            if target == 0:
                plugins: Mapping[str, Mapping[str, Any]] = {}
            else:
                plugins = self.generation(target).plugins
            try:
                self._gate.admit(plugins, cur.plugins, self._store, self.lock_path,
                                 every=True)
            except SignatureInvalid as exc:
                raise SignatureInvalid(f"cannot roll back to generation {target}: {exc.message}",
                                       plugin_id=exc.plugin_id,
                                       **{**exc.details, "generation": target}) from exc
            check_set(host, plugins, self._store)
            action = f"rollback to {target}"
            if skipped:
                action += f" (skipped failed generation {', '.join(map(str, skipped))})"
            return self._commit(host, cur, plugins, action, [], force=True)

    def _rollback_target(self, cur: Generation, skipped: list[int]) -> int:
        """The nearest ancestor of ``cur`` not failed and not equal to it (0: nothing)."""
        number = cur.parent
        seen: set[int] = set()
        while number is not None and number not in seen:
            seen.add(number)
            if number == 0:
                return 0
            try:
                gen = self.generation(number)
            except NotFoundError:
                break
            if gen.failed is not None:
                skipped.append(number)
            elif not _same(gen.plugins, cur.plugins):
                return number
            number = gen.parent
        raise UsageError(f"generation {cur.number} has no earlier generation to roll back to"
                         + (f" (skipped failed generation {', '.join(map(str, skipped))})"
                            if skipped else ""))


    # -- update -----------------------------------------------------------------

    def update(
        self, ids: Sequence[str] = (), *, check: bool = False, accept_permissions: bool = False,
        retry_failed: bool = False, allow_source_change: bool = False,
    ) -> UpdateResult:
        """Find newer versions and apply them (all plugins, or ``ids``).

        A version whose permissions grant more (a new entry in any list, or a
        weaker isolation) is held unless ``accept_permissions``; so is a version
        that brings a plugin new to the home (held with it, its full permissions
        listed): none of the held code runs.  A version with a ``self-test``
        export must pass it in a throwaway host first, always in a sandbox.  A
        version that failed its self-test or start-up before is skipped (listed
        in ``skipped``) unless ``retry_failed``.  Without a source, the one
        recorded in ``corral.lock`` is used.  ``check`` only lists.

        Raises:
            PolicyDenied: a plugin would come from another source or signing
                key than it was installed from (unless ``allow_source_change``).
        """
        with self._operation() as host, contextlib.ExitStack() as stack:
            cur = self.current()
            old = dict(cur.plugins) if cur else {}
            for pid in ids:
                if pid not in old:
                    raise NotFoundError(f"{pid} is not installed", plugin_id=pid)
            if cur is None or not old:
                return UpdateResult([], [], None)
            source = self.source if self.source is not None else recorded_source(
                old, stack, lock_path=self.lock_path, home=self.home)
            upgrade = sorted(ids or old)
            specs = {p: str(e.get("spec", "")) for p, e in old.items() if e.get("requested")}
            reqs = [Requirement(p, s) for p, s in specs.items()]
            locked = {p: str(e["version"]) for p, e in old.items()}
            releases = resolve_plan(reqs, source, locked=locked, upgrade=upgrade)
            failed = {} if retry_failed else self._generations.failed_versions()
            skipped = skipped_versions(releases, old, failed)
            if skipped:
                releases, reqs = avoid_failed(failed, old, reqs, source, locked, upgrade)
            old_manifests = self._store.manifests(old)
            available = available_updates(releases, old, old_manifests)
            if check or not available:
                return UpdateResult(available, [], None, skipped)
            created: list[Path] = []
            notes: list[str] = []

            def materialise(plan: Mapping[str, Release]) -> dict[str, dict[str, Any]]:
                return self._materialise(plan, source, old, specs, created)

            try:
                wanted, held = hold_back(
                    available, old, old_manifests, materialise(releases),
                    accept_permissions=accept_permissions, manifests=self._store.manifests,
                    replan=lambda held: pin_held(held, reqs, locked, upgrade, source, old,
                                                 materialise))
                self._gate.admit(wanted, old, self._store, self.lock_path)
                if not allow_source_change:
                    pin_sources(old, wanted)
                check_set(host, wanted, self._store)
                for pid, e in wanted.items():
                    if old.get(pid, {}).get("sha256") != e["sha256"]:
                        try:
                            note = run_self_test(pid, self._store.manifests(wanted), {
                                p: self.tree(x["sha256"]) for p, x in wanted.items()})
                            if note:
                                notes.append(note)
                        except PluginError as exc:
                            self._generations.remember_failure(
                                cur.number, [(pid, str(e["version"]))], exc.message)
                            raise
                names = [r["id"] for r in available if r not in held
                         and wanted.get(r["id"], {}).get("sha256") != old.get(r["id"], {})
                         .get("sha256")]
                enabled = [i.id for i in host.list(discovered=False) if i.state == "enabled"]
                try:
                    change = self._commit(host, cur, wanted, "update " + " ".join(names),
                                          created)
                    self._health(host, old, wanted, enabled)
                except CorralError as exc:
                    self._roll_back_failed(host, cur, enabled, exc, old, wanted)
                    raise
            except BaseException:
                for path in created:
                    remove_tree(path)
                raise
            return UpdateResult(available, held, change if change.changed else None, skipped,
                                notes)

    def _health(
        self, host: Host, old: Plugins, new: Plugins, enabled: Sequence[str],
    ) -> None:
        """Start, on its new version, every updated plugin that was enabled (the health check).

        An embedded host was re-enabled by the reconcile already; the host this
        installer opened for itself starts them here.
        """
        if self._host is not None:
            return
        for pid in enabled:
            if pid in new and old.get(pid, {}).get("sha256") != new[pid]["sha256"]:
                host.enable(pid)

    def _roll_back_failed(
        self, host: Host, cur: Generation | None, enabled: Sequence[str], exc: CorralError,
        old: Plugins, new: Plugins,
    ) -> None:
        """After a switch whose health check failed: mark it failed, back to ``cur``, raise.

        The failed generation records the failing versions (the plugin that
        failed, or every updated one when the error names none of them).
        """
        now = self.current()
        if now is None or (cur is not None and now.number == cur.number):
            return  # not switched: nothing to undo
        back_to = cur.number if cur is not None else 0  # 0: the empty generation
        back_plugins: Plugins = cur.plugins if cur is not None else {}
        updated = [p for p in sorted(new) if old.get(p, {}).get("sha256") != new[p]["sha256"]]
        culprits = [exc.plugin_id] if exc.plugin_id in updated else updated
        self._generations.remember_failure(
            now.number, [(p, str(new[p]["version"])) for p in culprits], exc.message,
            failed=True)
        self._commit(host, now, back_plugins,
                     f"rollback to {back_to} (automatic: {exc.message})", [], force=True)
        for pid in enabled:
            with contextlib.suppress(CorralError):
                if pid in back_plugins and host.info(pid)["state"] != "enabled":
                    host.enable(pid)
        raise PluginError(
            f"the change failed its health check and was rolled back to generation "
            f"{back_to} (now generation {now.number + 1}): {exc.message}",
            plugin_id=exc.plugin_id, cause=exc.to_dict(), generation=now.number + 1,
        ) from exc

    # -- garbage ----------------------------------------------------------------

    def prune(self, keep: int) -> list[int]:
        """Delete generation files but the current one and the ``keep`` most recent others.

        Returns the numbers deleted, oldest first.

        Raises:
            UsageError: ``keep`` is negative.
        """
        if keep < 0:
            raise UsageError(f"--keep must be 0 or more, got {keep}")
        with self._operation():
            return self._generations.prune(keep)

    def gc(self, keep: int | None = None) -> list[str]:
        """Delete store trees no generation refers to; returns their digests.

        With ``keep``, first :meth:`prune` the generations to the current one
        and the ``keep`` most recent, so their trees can go too.
        """
        if keep is not None:
            self.prune(keep)
        with self._operation():
            return self._store.collect(self._generations.used_digests())


def _same(a: Plugins, b: Plugins) -> bool:
    return {k: dict(v) for k, v in a.items()} == {k: dict(v) for k, v in b.items()}
