"""Publish and yank stay atomic with the signed TUF metadata: kill -9, write faults, retries.

A real ``corral registry serve`` process on 127.0.0.1 is killed with SIGKILL in
the middle of publish bursts, on SQLite and on PostgreSQL; after a restart every
version is either fully present (listed, downloadable, in the verified TUF
targets with the same hash) or absent from all of them, and the publishers'
retries succeed.  A real TUF write fault (the metadata folder replaced by a
file) leaves the version invisible until a retry or the next start signs it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from helpers.net import free_port

from corral._distribution.registry_source import RegistrySource, trust_registry
from corral._errors import NotFoundError
from corral.registry import _db
from corral.registry._artifacts import ArtifactError
from corral.registry._service import STALE_TEMP_SECONDS, Registry
from corral.registry._tuf import TufRepository

from .conftest import _accounts, _fresh_pg_db, make_plugin

PLUGINS = [f"acme.burst{i}" for i in range(3)]


@dataclass
class Served:
    """A registry data dir (and database) served by a real ``corral registry serve`` process."""

    data: Path
    db: str
    token: str
    tmp: Path
    proc: subprocess.Popen[bytes] | None = None
    proc_group: int = 0
    url: str = ""
    starts: list[str] = field(default_factory=list)

    def start(self, wrap: list[str] | None = None) -> None:
        """Start ``serve`` (inside ``wrap`` + a shell command line, if given)."""
        assert self.proc is None, "one server at a time"
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        log = (self.tmp / f"serve-{len(self.starts)}.log").open("wb")
        cmd = [sys.executable, "-m", "corral", "registry", "serve", "--data", str(self.data),
               "--db", self.db, "--port", str(port)]
        if wrap:
            cmd = [*wrap[:-1], f"{wrap[-1]} && exec {' '.join(cmd)}"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log,
                                     start_new_session=True)
        log.close()
        self.proc_group = self.proc.pid
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/v1/health", timeout=2).status_code == 200:
                    self.starts.append(self.log())
                    return
            time.sleep(0.05)
        raise AssertionError(f"the registry did not start: {self.log()}")

    def log(self) -> str:
        return (self.tmp / f"serve-{len(self.starts)}.log").read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL to the server and its worker processes at once, as a crash would."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the workers are gone too (the port is free)
            try:
                os.killpg(self.proc_group, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        raise AssertionError("server workers survived SIGKILL")

    def publish(self, archive: Path, client: httpx.Client | None = None) -> httpx.Response:
        if client is None:
            with httpx.Client(timeout=60) as fresh:
                return self.publish(archive, fresh)
        with archive.open("rb") as fp:
            return client.post(f"{self.url}/v1/publish", files={"archive": (archive.name, fp)},
                               headers={"Authorization": f"Bearer {self.token}"})

    def unsigned(self) -> tuple[int, int]:
        """(intents in the outbox, pending versions), read straight from the database."""
        engine = _db.open_engine(self.db)
        try:
            with engine.connect() as conn:
                intents = conn.execute(sa.select(sa.func.count()).select_from(
                    _db.tuf_outbox)).scalar_one()
                pending = conn.execute(sa.select(sa.func.count()).select_from(_db.versions)
                                       .where(_db.versions.c.pending == sa.true())).scalar_one()
        finally:
            engine.dispose()
        return int(intents), int(pending)


@pytest.fixture(params=["sqlite", "postgresql"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    """A TUF-initialised registry on ``request.param``, not yet started."""
    data = tmp_path / "data"
    if request.param == "postgresql":
        db = _fresh_pg_db(request.getfixturevalue("pg_url"))
    else:
        data.mkdir()
        db = f"sqlite:///{data / 'registry.db'}"
    reg = Registry.open(data, db)
    token, _ = _accounts(reg)
    TufRepository.initialise(reg, data, tmp_path / "offline", bins=16)
    reg.close()
    s = Served(data, db, token, tmp_path)
    yield s
    if s.proc is not None:
        s.kill()


def check_consistent(s: Served, home: Path, attempted: dict[tuple[str, str], str]) -> set[str]:
    """Assert no half-present version; return the ``id==version`` present."""
    home.mkdir(parents=True, exist_ok=True)
    trust_registry(home, s.url, (s.data / "tuf" / "metadata" / "1.root.json").read_bytes())
    present: set[str] = set()
    with RegistrySource(s.url, home, timeout=10) as src, httpx.Client(
            base_url=s.url, timeout=30) as http:
        for pid in PLUGINS:
            r = http.get(f"/v1/plugins/{pid}")
            listed = ({v["version"]: v["sha256"] for v in r.json()["versions"]}
                      if r.status_code == 200 else {})
            assert r.status_code in (200, 404), r.text
            try:
                releases = {rel.version: rel for rel in src.releases(pid)}
            except NotFoundError:
                releases = {}
            # listed exactly when signed, with the same hash
            assert listed == {v: rel.sha256 for v, rel in releases.items()}, pid
            for version, rel in releases.items():
                assert attempted[(pid, version)] == rel.sha256
                got = src.fetch(rel, home / "dl", lambda _d, _t: None)  # checks the TUF target
                assert hashlib.sha256(got.read_bytes()).hexdigest() == rel.sha256
                got.unlink()
                d = http.get(f"/v1/plugins/{pid}/versions/{version}/download")
                assert d.status_code == 200
                assert hashlib.sha256(d.content).hexdigest() == rel.sha256
                present.add(f"{pid}=={version}")
        for (pid, version), _sha in attempted.items():
            if f"{pid}=={version}" in present:
                continue
            assert http.get(f"/v1/plugins/{pid}/versions/{version}").status_code == 404
            assert http.get(f"/v1/plugins/{pid}/versions/{version}/download"
                            ).status_code == 404
    return present


def test_kill_9_during_publish_bursts_leaves_nothing_half_present(
        served: Served, tmp_path: Path) -> None:
    rng = random.Random(17)
    attempted: dict[tuple[str, str], str] = {}
    archives: dict[tuple[str, str], Path] = {}
    unsigned_at_kill: list[tuple[int, int]] = []
    answered: dict[tuple[str, str], int] = {}
    sent: set[tuple[str, str]] = set()
    served.start()
    for rnd in range(3):
        batches: list[list[tuple[str, str]]] = []
        for t in range(6):
            pid = PLUGINS[t % len(PLUGINS)]
            batch = []
            for k in range(10):
                key = (pid, f"{rnd + 1}.{t}.{k}")
                archives[key] = make_plugin(tmp_path / "arch", pid, key[1])
                attempted[key] = hashlib.sha256(archives[key].read_bytes()).hexdigest()
                batch.append(key)
            batches.append(batch)
        ok = threading.Semaphore(0)

        def burst(batch: list[tuple[str, str]], ok: threading.Semaphore) -> None:
            with httpx.Client(timeout=60) as client:
                for key in batch:
                    sent.add(key)
                    try:
                        answered[key] = served.publish(archives[key], client).status_code
                    except httpx.HTTPError:
                        return  # the server died under us
                    ok.release()

        threads = [threading.Thread(target=burst, args=(b, ok)) for b in batches]
        for th in threads:
            th.start()
        for _ in range(3):  # some publishes went through, more are in flight
            assert ok.acquire(timeout=120)
        time.sleep(rng.uniform(0.0, 0.15))
        served.kill()
        for th in threads:
            th.join(timeout=120)
        unsigned_at_kill.append(served.unsigned())
        served.start()  # start-up signs what the crash left unsigned
        assert served.unsigned() == (0, 0)
        check_consistent(served, tmp_path / f"home-{rnd}", attempted)
    print(f"[{served.db.split(':')[0]}] (intents, pending versions) at each kill:",
          unsigned_at_kill, "answers:", sorted(answered.values()).count(201), "x 201")
    assert answered  # all() below must not pass on nothing
    assert all(code == 201 for code in answered.values()), answered
    assert sum(i for i, _ in unsigned_at_kill) > 0  # some kills landed between commit and sign
    # the publishers' natural retry of all they sent: same bytes answer 200 or 201
    codes = {key: served.publish(archives[key]).status_code for key in sorted(sent)}
    assert set(codes.values()) <= {200, 201}, codes
    assert all(codes[key] == 200 for key in answered), "published ones answer 200 on retry"
    present = check_consistent(served, tmp_path / "home-final", attempted)
    assert present == {f"{p}=={v}" for p, v in sent}  # never-sent ones stay absent
    # other bytes under a published version are still refused
    p, v = next(iter(answered))
    other = make_plugin(tmp_path / "arch", p, v, description="other bytes")
    r = served.publish(other)
    assert r.status_code == 409
    assert r.json()["error"]["reason"] == "version_exists"


@contextlib.contextmanager
def broken_metadata(data: Path) -> Iterator[None]:
    """A real write fault: the TUF metadata folder replaced by a file (root is not stopped)."""
    meta = data / "tuf" / "metadata"
    saved = meta.with_name("metadata.saved")
    meta.rename(saved)
    meta.write_bytes(b"not a folder\n")
    try:
        yield
    finally:
        meta.unlink()
        saved.rename(meta)


def test_tuf_write_error_leaves_version_absent_then_repaired(
        served: Served, tmp_path: Path) -> None:
    pid = PLUGINS[0]
    served.start()
    a1, a2, a3 = (make_plugin(tmp_path / "arch", pid, v) for v in ("1.0.0", "1.1.0", "1.2.0"))
    sha = {v: hashlib.sha256(a.read_bytes()).hexdigest()
           for v, a in (("1.0.0", a1), ("1.1.0", a2), ("1.2.0", a3))}
    assert served.publish(a1).status_code == 201
    auth = {"Authorization": f"Bearer {served.token}"}
    with broken_metadata(served.data):
        r = served.publish(a2)
        assert r.status_code == 500, r.text
        assert r.json()["error"]["code"] == "error"
        assert str(served.data) not in r.text  # no server path leaks
        info = httpx.get(f"{served.url}/v1/plugins/{pid}").json()
        assert [v["version"] for v in info["versions"]] == ["1.0.0"]
        assert info["latest_version"] == "1.0.0"
        assert httpx.get(f"{served.url}/v1/plugins/{pid}/versions/1.1.0").status_code == 404
        assert httpx.get(f"{served.url}/v1/plugins/{pid}/versions/1.1.0/download"
                         ).status_code == 404
        assert httpx.get(f"{served.url}/v1/plugins/{pid}/download"
                         ).headers["X-Corral-Version"] == "1.0.0"
        assert httpx.get(f"{served.url}/v1/plugins/{pid}/resolve").json()["version"] == "1.0.0"
        r = served.publish(a2)  # a retry while the fault lasts fails the same way
        assert r.status_code == 500
        y = httpx.post(f"{served.url}/v1/plugins/{pid}/versions/1.0.0/yank",
                       json={"reason": "bad"}, headers=auth)
        assert y.status_code == 500  # applied (hidden from resolution), not yet signed
    assert served.unsigned() == (2, 1)  # the publish and the yank; the retry added none
    # the fault is gone, nothing re-signed yet: the signed metadata is still the old one
    present = check_consistent(served, tmp_path / "home-0", {(pid, "1.0.0"): sha["1.0.0"]})
    assert present == {f"{pid}==1.0.0"}
    served.kill()
    served.start()  # start-up repairs: 1.1.0 is signed and shown, the yank is signed
    assert "signed 1 plugin(s) left unsigned" in served.starts[-1]
    assert served.unsigned() == (0, 0)
    attempted = {(pid, v): sha[v] for v in ("1.0.0", "1.1.0")}
    assert check_consistent(served, tmp_path / "home-1", attempted) == {
        f"{pid}==1.0.0", f"{pid}==1.1.0"}
    home = tmp_path / "home-1"
    with RegistrySource(served.url, home, timeout=10) as src:
        rels = {r.version: r for r in src.releases(pid)}
    assert rels["1.0.0"].yanked
    assert not rels["1.1.0"].yanked
    # a fault, then the publisher's retry once it is gone repairs without a restart
    with broken_metadata(served.data):
        assert served.publish(a3).status_code == 500
    r = served.publish(a3)
    assert r.status_code == 200, r.text
    assert r.json()["created"] is False
    assert r.json()["sha256"] == sha["1.2.0"]
    attempted[(pid, "1.2.0")] = sha["1.2.0"]
    assert len(check_consistent(served, tmp_path / "home-2", attempted)) == 3


def test_full_metadata_disk_leaves_version_absent_then_repaired(
        served: Served, tmp_path: Path) -> None:
    """ENOSPC for real: ``serve`` in a user+mount namespace with its metadata on a full tmpfs."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"],
                           capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"user+mount namespaces are not permitted here: {probe.stderr!r}")
    if served.db.startswith("postgresql"):
        pytest.skip("the test cluster's socket belongs to a user the namespace cannot map")
    pid = PLUGINS[1]
    a1, a2 = (make_plugin(tmp_path / "arch", pid, v) for v in ("1.0.0", "2.0.0"))
    meta = served.data / "tuf" / "metadata"
    copy = tmp_path / "meta-copy"
    shutil.copytree(meta, copy)
    before = {p.name: p.read_bytes() for p in meta.iterdir()}
    # the namespace sees a 1 MB tmpfs over the metadata, holding a copy of it, filled up
    fill = (f"mount -t tmpfs -o size=1m tmpfs {meta} && cp -a {copy}/. {meta}/ && "
            f"(dd if=/dev/zero of={meta}/.fill bs=4k 2>/dev/null || true)")
    served.start(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", fill])
    r = served.publish(a1)
    assert r.status_code == 507, r.text
    assert r.json()["error"]["reason"] == "no_space"
    assert httpx.get(f"{served.url}/v1/plugins/{pid}").status_code == 404  # not shown
    assert httpx.get(f"{served.url}/v1/plugins/{pid}/versions/1.0.0/download"
                     ).status_code == 404
    assert served.publish(a1).status_code == 507  # the retry too, while the disk is full
    served.kill()
    assert {p.name: p.read_bytes() for p in meta.iterdir()} == before  # tmpfs gone
    assert served.unsigned() == (1, 1)
    served.start()  # disk space back: start-up signs and shows it
    assert served.unsigned() == (0, 0)
    sha1 = hashlib.sha256(a1.read_bytes()).hexdigest()
    assert check_consistent(served, tmp_path / "home", {(pid, "1.0.0"): sha1}) == {
        f"{pid}==1.0.0"}
    assert served.publish(a1).status_code == 200
    assert served.publish(a2).status_code == 201


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t), follow_symlinks=False)


def test_start_up_sweeps_temp_files_but_not_another_servers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    reg = Registry.open(data)
    token, _ = _accounts(reg)
    TufRepository.initialise(reg, data, tmp_path / "offline", bins=4)
    principal = reg.authenticate(token)
    kept = reg.publish(make_plugin(tmp_path, "acme.kept", "1.0.0"), principal)
    reg.close()
    blob = data / "artifacts" / kept["sha256"][:2] / kept["sha256"][2:4] / kept["sha256"]
    orphan_sha = "ab" * 32
    orphan = data / "artifacts" / "ab" / "ab" / orphan_sha
    orphan.parent.mkdir(parents=True, exist_ok=True)

    def litter() -> list[Path]:
        (data / "tmp" / "publish-x1" / "plugin").mkdir(parents=True, exist_ok=True)
        files = [data / "tmp" / "upload-abc.corral", blob.parent / ".upload.zz.tmp",
                 data / "tuf" / "metadata" / ".timestamp.json.0123456789ab.tmp",
                 data / "tuf" / "targets" / "index" / ".x.json.abcdefabcdef.tmp", orphan]
        for f in files:
            f.write_bytes(b"half written")
        return [*files, data / "tmp" / "publish-x1"]

    # another server holds the data dir: young temp files are its own, kept; old ones go
    first = Registry.open(data)
    assert first.claim() is True
    young = litter()
    second = Registry.open(data)
    old = young[0]
    _age(old, STALE_TEMP_SECONDS + 60)
    out = second.housekeep()
    assert out["sole"] is False
    assert not old.exists()
    assert all(p.exists() for p in young[1:])  # in-flight work of the other server
    second.close()
    first.close()
    # alone: every temp file and the unreferenced blob are swept; signed files stay
    young = litter()
    meta_before = sorted(p.name for p in (data / "tuf" / "metadata").iterdir()
                         if not p.name.endswith(".tmp"))
    alone = Registry.open(data)
    out = alone.housekeep()
    assert out["sole"] is True
    assert out["swept"] == len(young)
    assert not any(p.exists() for p in young)
    assert blob.is_file()
    assert sorted(p.name for p in (data / "tuf" / "metadata").iterdir()) == meta_before
    assert alone.info("acme.kept")["versions"][0]["sha256"] == kept["sha256"]
    alone.close()


def test_timer_signs_what_a_failed_signing_left(tmp_path: Path) -> None:
    data = tmp_path / "data"
    reg = Registry.open(data)
    token, _ = _accounts(reg)
    TufRepository.initialise(reg, data, tmp_path / "offline", bins=4)
    who = reg.authenticate(token)
    archive = make_plugin(tmp_path, "acme.timed", "1.0.0")
    with broken_metadata(data), pytest.raises(ArtifactError, match="unpublished until signing"):
        reg.publish(archive, who)
    with pytest.raises(NotFoundError):
        reg.info("acme.timed")
    assert reg.info("acme.timed", include_pending=True)["versions"][0]["version"] == "1.0.0"
    reg.start_housekeeping(interval=0.2)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(NotFoundError):
            if reg.info("acme.timed")["versions"]:
                break
        time.sleep(0.1)
    assert reg.info("acme.timed")["latest_version"] == "1.0.0"
    repo = TufRepository.open(data)
    path = "plugins/acme.timed/acme.timed-1.0.0.corral"
    succinct = repo.targets_role("targets").signed.delegations
    assert succinct is not None
    assert succinct.succinct_roles is not None
    bin_name = succinct.succinct_roles.get_role_for_target(path)
    target = repo.targets_role(bin_name).signed.targets[path]
    assert target.hashes["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    reg.close()  # stops the timer


def test_upgrade_adds_outbox_to_an_existing_database(served: Served, tmp_path: Path) -> None:
    """A schema-3 database (no ``pending``, no outbox) migrates; its versions stay shown."""
    reg = Registry.open(served.data, served.db)
    reg.publish(make_plugin(tmp_path, "acme.old", "1.0.0"), reg.authenticate(served.token))
    reg.close()
    engine = _db.open_engine(served.db)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE versions DROP COLUMN pending")
        conn.exec_driver_sql("DROP TABLE tuf_outbox")
        conn.exec_driver_sql("DELETE FROM schema_migrations WHERE version = 4")
    engine.dispose()
    reg = Registry.open(served.data, served.db)
    try:
        assert [v["version"] for v in reg.info("acme.old")["versions"]] == ["1.0.0"]
        assert reg.resolve("acme.old")["version"] == "1.0.0"
        assert reg.reconcile() == []
        out = reg.publish(make_plugin(tmp_path, "acme.old", "1.1.0"),
                          reg.authenticate(served.token))
        assert out["created"] is True
        assert reg.info("acme.old")["latest_version"] == "1.1.0"
    finally:
        reg.close()
