"""Installer figures: a plugin with 10 dependencies, installed end to end, and rollback.

* install from a folder of archives (DirectorySource): in-process and through the
  real command line (``python -m corral install``, interpreter start included);
  target <= 1 s end to end;
* the same install from a live TUF registry on loopback (RegistrySource): in-process
  (with the HTTP request count and the median time of one metadata request) and
  through the command line (``--source http://...``, interpreter start included);
* rollback between two generations of 11 plugins, in-process and through the
  command line; target <= 100 ms (in-process).

Every archive is signed by a publisher key the user's home trusts, so each
figure includes the signature checks and trust look-ups a user pays (no
``--allow-unsigned``).  ``python benchmarks/bench_install.py [--quick] [--json FILE]``.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from harness import Bench  # noqa: E402

from corral._disk.archive import pack_directory  # noqa: E402
from corral._distribution.install import DirectorySource, Installer  # noqa: E402
from corral._distribution.signing import generate_key, sign_directory  # noqa: E402
from corral._distribution.trust import TrustStore  # noqa: E402


def write_plugin(root: Path, pid: str, version: str, deps: dict[str, str]) -> Path:
    """A small real plugin with one export, its dependencies in ``[dependencies]``."""
    src = root / "src" / f"{pid}-{version}"
    src.mkdir(parents=True)
    mod = "m_" + pid.replace(".", "_")
    dep_lines = "\n".join(f'"{k}" = "{v}"' for k, v in deps.items())
    (src / "corral.toml").write_text(textwrap.dedent(f"""\
        [plugin]
        id = "{pid}"
        name = "{pid}"
        version = "{version}"
        description = "bench plugin"
        license = "MIT"
        authors = [{{ name = "Bench" }}]

        [permissions]
        fs-read = ["{{workspace}}"]

        [exports]
        hello = "{mod}:hello"

        [dependencies]
        """) + dep_lines + "\n")
    (src / f"{mod}.py").write_text("def hello(value, ctx):\n    return {'hi': value}\n")
    return src


def build_repo(root: Path) -> tuple[Path, Any]:
    """acme.app 1.0.0 and 1.1.0, each needing acme.dep0..9, signed and packed into ``root/repo``.

    Returns the folder and the publisher's key (users trust its public half).
    """
    key = generate_key("bench-publisher", root / "keys")
    repo = root / "repo"
    repo.mkdir(parents=True)

    def pack(src: Path, dest: Path) -> None:
        sign_directory(src, key)
        pack_directory(src, dest)

    for i in range(10):
        pack(write_plugin(root, f"acme.dep{i}", "1.0.0", {}), repo / f"acme.dep{i}-1.0.0.corral")
    deps = {f"acme.dep{i}": ">=1" for i in range(10)}
    for v in ("1.0.0", "1.1.0"):
        pack(write_plugin(root, "acme.app", v, deps), repo / f"acme.app-{v}.corral")
    return repo, key


def trusting_home(home: Path, key: Any) -> Path:
    """A fresh home that trusts the publisher's key, as ``corral keys trust`` leaves it."""
    TrustStore(home).trust(key.public_key_b64, "bench publisher")
    return home


def cli(*args: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CORRAL_HOME", "CORRAL_REGISTRY")}
    subprocess.run([sys.executable, "-m", "corral", *args], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def bench_directory(bench: Bench, tmp: Path, repo: Path, key: Any) -> None:
    homes = iter(range(10_000))
    box: list[Path] = []

    def fresh() -> None:  # untimed: a new home that trusts the publisher
        box[:] = [trusting_home(tmp / f"h{next(homes)}", key)]

    bench.section("install app + 10 deps from a folder of signed archives (signatures checked)")
    bench.time("in-process Installer.install",
               lambda: Installer(box[0], DirectorySource(repo)).install(["acme.app@1.0.0"]),
               setup=fresh)
    ours = bench.time("CLI end to end: corral install --source DIR",
                      lambda: cli("--home", str(box[0]), "install", "acme.app@1.0.0",
                                  "--source", str(repo), "--json"),
                      setup=fresh, target="<= 1000 ms")
    bare = bench.process("bare interpreter: python -c pass", [sys.executable, "-c", "pass"])
    bench.ratio(ours, bare)

    home = trusting_home(tmp / "rollback", key)
    inst = Installer(home, DirectorySource(repo))
    inst.install(["acme.app@1.0.0"])
    inst.install(["acme.app@1.1.0"])
    bench.section("rollback between two generations of 11 signed plugins (each checked again)")
    bench.time("in-process Installer.rollback", inst.rollback, target="<= 100 ms")
    bench.time("CLI end to end: corral rollback",
               lambda: cli("--home", str(home), "rollback", "--json"))


def bench_registry(bench: Bench, tmp: Path, root: Path, key: Any) -> None:
    """The same install from a TUF registry served on loopback."""
    try:
        import httpx

        from corral._distribution.registry_source import RegistrySource, trust_registry
        from corral.registry._app import open_server
        from corral.registry._service import Registry
        from corral.registry._tuf import TufRepository
    except ImportError as exc:
        print(f"registry: skipped ({exc})")
        return
    data = tmp / "registry"
    reg = Registry.open(data)
    reg.create_publisher("acme", email="dev@acme.test")
    reg.create_namespace("acme", "acme")
    token = reg.create_token("acme", scopes=("publish",), expires_in=dt.timedelta(days=1))
    repo = TufRepository.initialise(reg, data, tmp / "offline", bins=16)
    with open_server(reg) as url, httpx.Client(base_url=url, timeout=30) as http:
        for archive in sorted((root / "repo").glob("*.corral")):
            with archive.open("rb") as fp:
                r = http.post("/v1/publish",
                              files={"archive": (archive.name, fp, "application/zip")},
                              headers={"Authorization": f"Bearer {token}"})
            if r.status_code != 201:
                print(f"registry: skipped (publish {archive.name}: {r.status_code} {r.text})")
                reg.close()
                return
        root_json = (repo.metadata_dir / "1.root.json").read_bytes()
        homes = iter(range(10_000))
        bench.section("install app + 10 signed deps from a TUF registry on loopback")
        bench.time("one TUF metadata request, keep-alive (no delayed-ACK stall)",
                   lambda: http.get("/tuf/metadata/1.root.json"), inner=20,
                   target="20 requests <= 0.5 s (was tests/registry/test_tuf_speed.py)")
        # requests counted where the server answers them (whatever the client uses)
        sent = [0]
        meta_path, target_path = TufRepository.metadata_path, TufRepository.target_path

        def count_meta(self: TufRepository, name: str) -> Path:
            sent[0] += 1
            return meta_path(self, name)

        def count_target(self: TufRepository, registry: Registry, path: str) -> Path:
            sent[0] += 1
            return target_path(self, registry, path)

        box: list[Path] = []

        def fresh() -> None:  # untimed: a new home trusting the registry and the publisher
            home = trusting_home(tmp / f"r{next(homes)}", key)
            trust_registry(home, url, root_json)
            box[:] = [home]

        def install() -> None:
            with RegistrySource(url, box[0], timeout=10) as src:
                Installer(box[0], src).install(["acme.app@1.0.0"])

        TufRepository.metadata_path = count_meta  # type: ignore[method-assign]
        TufRepository.target_path = count_target  # type: ignore[method-assign]
        try:
            fresh()
            install()
        finally:
            TufRepository.metadata_path = meta_path  # type: ignore[method-assign]
            TufRepository.target_path = target_path  # type: ignore[method-assign]
        bench.value("HTTP requests of one install into a fresh home", sent[0], "requests")
        bench.time("in-process (fresh home: TUF metadata fetched too)", install, setup=fresh)
        bench.time("CLI end to end: corral install --source URL",
                   lambda: cli("--home", str(box[0]), "install", "acme.app@1.0.0", "--source",
                               url, "--json"),
                   setup=fresh, target="<= 1000 ms")
    reg.close()


def main() -> None:
    bench = Bench("bench_install", __doc__)
    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-install-"))
    try:
        repo, key = build_repo(tmp)
        bench_directory(bench, tmp, repo, key)
        bench_registry(bench, tmp, tmp, key)
        bench.done()
    finally:
        for folder, dirs, _ in os.walk(tmp):
            for d in [folder, *(os.path.join(folder, x) for x in dirs)]:
                os.chmod(d, 0o755)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
