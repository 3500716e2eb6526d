"""Installer figures: a plugin with 10 dependencies, installed end to end, and rollback.

* install from a folder of archives (DirectorySource): in-process and through the
  real command line (``python -m corral install``, interpreter start included);
  target <= 1 s end to end;
* the same install from a live TUF registry on loopback (RegistrySource): in-process
  (with the HTTP request count and the median time of one metadata request) and
  through the command line (``--source http://...``, interpreter start included);
* rollback between two generations of 11 plugins, in-process and through the
  command line; target <= 100 ms (in-process).

Run it with the virtualenv's interpreter:
``.venv/bin/python benchmarks/bench_install.py [--runs N]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from corral._disk.archive import pack_directory  # noqa: E402
from corral._distribution.install import DirectorySource, Installer  # noqa: E402


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


def build_repo(root: Path) -> Path:
    """acme.app 1.0.0 and 1.1.0, each needing acme.dep0..9; packed into ``root/repo``."""
    repo = root / "repo"
    repo.mkdir(parents=True)
    for i in range(10):
        pack_directory(write_plugin(root, f"acme.dep{i}", "1.0.0", {}),
                       repo / f"acme.dep{i}-1.0.0.corral")
    deps = {f"acme.dep{i}": ">=1" for i in range(10)}
    for v in ("1.0.0", "1.1.0"):
        pack_directory(write_plugin(root, "acme.app", v, deps), repo / f"acme.app-{v}.corral")
    return repo


def median_ms(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), max(times)


def cli(*args: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CORRAL_HOME", "CORRAL_REGISTRY")}
    subprocess.run([sys.executable, "-m", "corral", *args], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def bench_directory(tmp: Path, repo: Path, runs: int) -> None:
    homes = iter(range(10_000))

    def install() -> None:
        home = tmp / f"h{next(homes)}"
        Installer(home, DirectorySource(repo), allow_unsigned=True).install(["acme.app@1.0.0"])

    med, worst = median_ms(install, runs)
    print(f"install app + 10 deps, DirectorySource, in-process: median {med:.0f} ms "
          f"(max {worst:.0f} ms, {runs} runs)")

    def install_cli() -> None:
        cli("--home", str(tmp / f"h{next(homes)}"), "install", "acme.app@1.0.0",
            "--source", str(repo), "--allow-unsigned", "--json")

    med, worst = median_ms(install_cli, runs)
    print(f"install app + 10 deps, DirectorySource, CLI end to end: median {med:.0f} ms "
          f"(max {worst:.0f} ms; target <= 1000)")

    home = tmp / "rollback"
    inst = Installer(home, DirectorySource(repo), allow_unsigned=True)
    inst.install(["acme.app@1.0.0"])
    inst.install(["acme.app@1.1.0"])
    med, worst = median_ms(inst.rollback, runs * 4)
    print(f"rollback (11 plugins), in-process: median {med:.1f} ms "
          f"(max {worst:.1f} ms; target <= 100)")
    med, worst = median_ms(
        lambda: cli("--home", str(home), "rollback", "--allow-unsigned", "--json"), runs)
    print(f"rollback (11 plugins), CLI end to end: median {med:.0f} ms (max {worst:.0f} ms)")


def bench_registry(tmp: Path, root: Path, runs: int) -> None:
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
        one, _ = median_ms(lambda: http.get("/tuf/metadata/1.root.json"), 50)
        print(f"one TUF metadata request on loopback (keep-alive): median {one:.2f} ms")
        # requests counted where the server answers them (whatever the client uses)
        sent = [0]
        meta_path, target_path = TufRepository.metadata_path, TufRepository.target_path

        def count_meta(self: TufRepository, name: str) -> Path:
            sent[0] += 1
            return meta_path(self, name)

        def count_target(self: TufRepository, registry: Registry, path: str) -> Path:
            sent[0] += 1
            return target_path(self, registry, path)

        def install() -> None:
            home = tmp / f"r{next(homes)}"
            trust_registry(home, url, root_json)
            with RegistrySource(url, home, timeout=10) as src:
                Installer(home, src, allow_unsigned=True).install(["acme.app@1.0.0"])

        TufRepository.metadata_path = count_meta  # type: ignore[method-assign]
        TufRepository.target_path = count_target  # type: ignore[method-assign]
        try:
            install()
        finally:
            TufRepository.metadata_path = meta_path  # type: ignore[method-assign]
            TufRepository.target_path = target_path  # type: ignore[method-assign]
        med, worst = median_ms(install, runs)
        print(f"install app + 10 deps, TUF registry on loopback, in-process: median "
              f"{med:.0f} ms (max {worst:.0f} ms; {sent[0]} HTTP requests; fresh home: "
              "TUF metadata fetched too)")

        def install_cli() -> None:
            home = tmp / f"r{next(homes)}"
            trust_registry(home, url, root_json)
            cli("--home", str(home), "install", "acme.app@1.0.0", "--source", url,
                "--allow-unsigned", "--json")

        med, worst = median_ms(install_cli, runs)
        print(f"install app + 10 deps, TUF registry on loopback, CLI end to end: median "
              f"{med:.0f} ms (max {worst:.0f} ms; target <= 1000)")
    reg.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-install-"))
    try:
        repo = build_repo(tmp)
        bench_directory(tmp, repo, args.runs)
        bench_registry(tmp, tmp, args.runs)
    finally:
        for folder, dirs, _ in os.walk(tmp):
            for d in [folder, *(os.path.join(folder, x) for x in dirs)]:
                os.chmod(d, 0o755)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
