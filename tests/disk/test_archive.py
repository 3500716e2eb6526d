"""Safe extraction and reproducible packing of ``.corral`` archives, on real zips."""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

import pytest

from corral._disk.archive import (
    extract_archive,
    iter_archive_names,
    pack_directory,
)
from corral._errors import InvalidPluginError, NotFoundError

MANIFEST = b'[plugin]\nid = "acme.demo"\nname = "Demo"\nversion = "1.0.0"\n'


def make_zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]], **kw: int) -> Path:
    """Write a zip with exactly the given entries (names are not sanitised)."""
    with zipfile.ZipFile(path, "w", compression=kw.get("compression", zipfile.ZIP_DEFLATED)) as zf:
        for name, data in entries:
            if isinstance(name, str) and "\x00" in name:
                raw = zipfile.ZipInfo("placeholder")
                raw.filename = name  # ZipInfo() would cut the name at the NUL
                zf.writestr(raw, data)
            else:
                zf.writestr(name, data)
    return path


def snapshot(folder: Path) -> set[str]:
    """Every path under ``folder``, relative, to compare before and after."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A folder where archives live, separate from where they are extracted."""
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    return tmp_path


def rejected(work: Path, archive: Path, match: str, **limits: int) -> InvalidPluginError:
    """Extract ``archive``, expect rejection, and check nothing was left anywhere."""
    before = snapshot(work)
    dest = work / "out" / "plugin"
    with pytest.raises(InvalidPluginError, match=match) as info:
        extract_archive(archive, dest, **limits)
    assert snapshot(work) == before, "extraction left files behind"
    assert str(archive) in info.value.message
    assert info.value.to_dict()["code"] == "invalid"
    return info.value


# -- good archives -----------------------------------------------------------


def make_plugin(root: Path) -> Path:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "corral.toml").write_bytes(MANIFEST)
    (root / "pkg" / "__init__.py").write_text("X = 1\n")
    (root / "pkg" / "sub" / "mod.py").write_text("def f(x, ctx):\n    return x\n")
    (root / "pkg" / "__pycache__").mkdir()
    (root / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"junk")
    (root / "pkg" / "stale.pyc").write_bytes(b"junk")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "data").mkdir()  # empty folders survive the round trip
    return root


def test_pack_and_extract_round_trip(work: Path) -> None:
    src = make_plugin(work / "src")
    os.chmod(src / "pkg" / "__init__.py", 0o4755)  # setuid must not survive
    archive = pack_directory(src, work / "in" / "demo.corral")
    names = list(iter_archive_names(archive))
    assert names == sorted(names)
    assert "corral.toml" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") or ".git" in n for n in names)

    dest = extract_archive(archive, work / "out" / "demo")
    assert dest == work / "out" / "demo"
    assert snapshot(dest) == {
        "corral.toml",
        "data",
        "pkg",
        "pkg/__init__.py",
        "pkg/sub",
        "pkg/sub/mod.py",
    }
    assert (dest / "corral.toml").read_bytes() == MANIFEST
    assert (dest / "pkg" / "sub" / "mod.py").read_text() == "def f(x, ctx):\n    return x\n"
    for path in [dest, *dest.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), path
    # nothing but the destination appeared next to it
    assert sorted(os.listdir(work / "out")) == ["demo"]


def test_pack_is_reproducible(work: Path) -> None:
    src = make_plugin(work / "src")
    first = pack_directory(src, work / "in" / "a.corral").read_bytes()
    os.utime(src / "corral.toml", ns=(2_000_000_000 * 10**9, 2_000_000_000 * 10**9))
    os.chmod(src / "pkg" / "__init__.py", 0o700)
    second = pack_directory(src, work / "in" / "b.corral").read_bytes()
    assert first == second
    with zipfile.ZipFile(work / "in" / "a.corral") as zf:
        for info in zf.infolist():
            assert info.date_time == (1980, 1, 1, 0, 0, 0)


def test_pack_into_the_source_folder_skips_its_own_output(work: Path) -> None:
    src = make_plugin(work / "src")
    first = pack_directory(src, src / "demo.corral").read_bytes()
    second = pack_directory(src, src / "demo.corral").read_bytes()
    assert first == second
    assert "demo.corral" not in list(iter_archive_names(src / "demo.corral"))


def test_pack_rejects_names_extraction_would_refuse(work: Path) -> None:
    src = make_plugin(work / "src")
    (src / "back\\slash.py").write_text("")
    with pytest.raises(InvalidPluginError, match="backslash"):
        pack_directory(src, work / "in" / "x.corral")
    assert os.listdir(work / "in") == []


def test_pack_rejects_links_and_missing_manifest(work: Path) -> None:
    src = make_plugin(work / "src")
    (src / "leak").symlink_to("/etc/passwd")
    with pytest.raises(InvalidPluginError, match="leak"):
        pack_directory(src, work / "in" / "x.corral")
    (src / "leak").unlink()
    (src / "corral.toml").unlink()
    with pytest.raises(InvalidPluginError, match=r"no corral\.toml"):
        pack_directory(src, work / "in" / "x.corral")
    with pytest.raises(NotFoundError):
        pack_directory(work / "nope", work / "in" / "x.corral")
    assert os.listdir(work / "in") == []


def test_single_top_folder_is_stripped(work: Path) -> None:
    archive = make_zip(
        work / "in" / "a.corral",
        [("demo-1.0/", b""), ("demo-1.0/corral.toml", MANIFEST), ("demo-1.0/m/x.py", b"x=1\n")],
    )
    dest = extract_archive(archive, work / "out" / "demo")
    assert snapshot(dest) == {"corral.toml", "m", "m/x.py"}


def test_macosx_resource_forks_are_ignored(work: Path) -> None:
    archive = make_zip(
        work / "in" / "a.corral",
        [("demo/corral.toml", MANIFEST), ("__MACOSX/demo/._corral.toml", b"\0\5\26\7")],
    )
    dest = extract_archive(archive, work / "out" / "demo")
    assert snapshot(dest) == {"corral.toml"}


def test_dest_must_not_exist(work: Path) -> None:
    archive = make_zip(work / "in" / "a.corral", [("corral.toml", MANIFEST)])
    (work / "out" / "demo").mkdir()
    with pytest.raises(FileExistsError):
        extract_archive(archive, work / "out" / "demo")
    assert os.listdir(work / "out") == ["demo"]


def test_missing_archive_is_not_found(work: Path) -> None:
    with pytest.raises(NotFoundError, match="nope"):
        extract_archive(work / "in" / "nope.corral", work / "out" / "demo")


# -- hostile archives ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("../x", r"'\.\./x'.*'\.\.'"),
        ("a/../../x", r"'a/\.\./\.\./x'.*'\.\.'"),
        ("/etc/x", r"'/etc/x'.*absolute"),
        ("C:/x", r"'C:/x'.*drive letter"),
        ("a\\..\\x", r"backslash"),
        ("a//b", r"'a//b'.*empty"),
        ("./x", r"'\./x'.*'\.'"),
        ("a\x00b", r"NUL byte in entry name"),
        ("a\nb", r"control character"),
        ("d/" * 600 + "x", r"entry name longer than 1024 bytes"),
        ("d/" + "é" * 128, r"path component longer than 255 bytes"),  # 128 characters, 256 bytes
    ],
)
def test_hostile_names(work: Path, name: str, match: str) -> None:
    archive = make_zip(work / "in" / "evil.corral", [("corral.toml", MANIFEST), (name, b"owned")])
    error = rejected(work, archive, match)
    assert error.details["entry"] == name
    assert not (work / "x").exists()
    assert not Path("/etc/x").exists()


def test_empty_name(work: Path) -> None:
    blank = zipfile.ZipInfo("placeholder")
    blank.filename = ""  # zipfile writes whatever name the ZipInfo holds
    archive = make_zip(work / "in" / "evil.corral", [("corral.toml", MANIFEST), (blank, b"x")])
    assert "" in list(iter_archive_names(archive))
    rejected(work, archive, "empty entry name")


def test_symlink_entry(work: Path) -> None:
    link = zipfile.ZipInfo("evil")
    link.create_system = 3
    link.external_attr = 0o120777 << 16
    archive = make_zip(work / "in" / "evil.corral", [("corral.toml", MANIFEST), (link, b"/etc")])
    rejected(work, archive, r"'evil'.*symbolic link")


@pytest.mark.parametrize("kind", [stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK])
def test_special_file_entry(work: Path, kind: int) -> None:
    dev = zipfile.ZipInfo("dev")
    dev.external_attr = (kind | 0o666) << 16
    archive = make_zip(work / "in" / "evil.corral", [("corral.toml", MANIFEST), (dev, b"")])
    rejected(work, archive, r"'dev'.*not a regular file")


def test_setuid_bits_are_not_honoured(work: Path) -> None:
    suid = zipfile.ZipInfo("run.sh")
    suid.external_attr = (stat.S_IFREG | 0o6777) << 16
    archive = make_zip(
        work / "in" / "a.corral", [("corral.toml", MANIFEST), (suid, b"#!/bin/sh\n")]
    )
    dest = extract_archive(archive, work / "out" / "demo")
    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o644


def test_zip_bomb(work: Path) -> None:
    archive = make_zip(
        work / "in" / "bomb.corral",
        [("corral.toml", MANIFEST), ("zeros.bin", b"\0" * (10 * 1024 * 1024))],
    )
    assert archive.stat().st_size < 100_000
    rejected(work, archive, r"'zeros\.bin'.*compression ratio")


def test_bomb_with_lying_header(work: Path) -> None:
    # The central directory claims 1000 bytes: the header checks pass, but no more than
    # the declared bytes are ever written and the stream is then refused as corrupt.
    archive = make_zip(
        work / "in" / "liar.corral",
        [("corral.toml", MANIFEST), ("zeros.bin", b"\0" * (10 * 1024 * 1024))],
    )
    data = bytearray(archive.read_bytes())
    cd = data.rindex(b"PK\x01\x02")
    assert data[cd + 46 : cd + 46 + 9] == b"zeros.bin"
    data[cd + 24 : cd + 28] = (1000).to_bytes(4, "little")  # uncompressed size
    archive.write_bytes(bytes(data))
    rejected(work, archive, r"'zeros\.bin'.*corrupt")


def test_huge_central_directory_is_refused_before_parsing(work: Path) -> None:
    entries: list[tuple[str | zipfile.ZipInfo, bytes]] = [("corral.toml", MANIFEST)]
    entries += [(f"{'n' * 200}{i:04}.txt", b"") for i in range(100)]
    archive = make_zip(work / "in" / "wide.corral", entries)
    rejected(work, archive, r"central directory of \d+ bytes is too large", max_entries=5)


def test_total_size_cap(work: Path) -> None:
    archive = make_zip(
        work / "in" / "big.corral",
        [("corral.toml", MANIFEST), ("a.bin", os.urandom(4000)), ("b.bin", os.urandom(4000))],
        compression=zipfile.ZIP_STORED,
    )
    rejected(work, archive, r"'b\.bin'.*more than 6000 bytes", max_total_bytes=6000)


def test_too_many_entries(work: Path) -> None:
    entries: list[tuple[str | zipfile.ZipInfo, bytes]] = [("corral.toml", MANIFEST)]
    entries += [(f"f{i:03}.txt", b"") for i in range(50)]
    archive = make_zip(work / "in" / "many.corral", entries)
    rejected(work, archive, r"more than 20 entries.*'f019\.txt'", max_entries=20)


def test_not_a_zip(work: Path) -> None:
    archive = work / "in" / "plain.corral"
    archive.write_text("[plugin]\nid = 'x'\n")
    rejected(work, archive, "not a valid zip")
    with pytest.raises(InvalidPluginError, match="not a valid zip"):
        list(iter_archive_names(archive))


def test_empty_file(work: Path) -> None:
    archive = work / "in" / "empty.corral"
    archive.write_bytes(b"")
    rejected(work, archive, "not a valid zip")


def test_truncated_zip(work: Path) -> None:
    good = make_zip(
        work / "in" / "good.corral",
        [("corral.toml", MANIFEST), ("data.bin", os.urandom(20_000))],
    )
    data = good.read_bytes()
    good.unlink()
    for cut in (len(data) // 2, len(data) - 10):
        archive = work / "in" / "cut.corral"
        archive.write_bytes(data[:cut])
        rejected(work, archive, "not a valid zip")
        archive.unlink()


def test_corrupt_data_is_caught_while_extracting(work: Path) -> None:
    archive = make_zip(
        work / "in" / "bad.corral",
        [("corral.toml", MANIFEST), ("data.bin", b"A" * 5000)],
        compression=zipfile.ZIP_STORED,
    )
    data = bytearray(archive.read_bytes())
    at = data.index(b"A" * 5000)
    data[at + 100] = ord("B")  # flip one byte: the CRC no longer matches
    archive.write_bytes(bytes(data))
    rejected(work, archive, r"'data\.bin'.*corrupt")


def test_duplicate_names(work: Path) -> None:
    archive = work / "in" / "dup.corral"
    with pytest.warns(UserWarning, match="Duplicate name"):
        make_zip(archive, [("corral.toml", MANIFEST), ("a.py", b"1"), ("a.py", b"2")])
    rejected(work, archive, r"'a\.py'.*duplicate")


@pytest.mark.parametrize(
    ("first", "second", "match"),
    [
        ("Readme.md", "README.md", r"'README\.md'.*collides with 'Readme\.md'"),
        ("Pkg/a.py", "pkg/b.py", r"'pkg/b\.py'.*folder collides with 'Pkg'"),
        ("caf\u00e9.py", "cafe\u0301.py", r"collides"),
        ("x", "x/y.py", r"'x'.*both a file and a folder"),
        ("x/", "x", r"'x'.*both a file and a folder \('x/'\)"),
    ],
)
def test_case_collisions(work: Path, first: str, second: str, match: str) -> None:
    archive = make_zip(
        work / "in" / "case.corral", [("corral.toml", MANIFEST), (first, b"1"), (second, b"2")]
    )
    rejected(work, archive, match)


def test_encrypted_entry(work: Path) -> None:
    secret = zipfile.ZipInfo("secret.py")
    archive = make_zip(work / "in" / "enc.corral", [("corral.toml", MANIFEST), (secret, b"x")])
    data = bytearray(archive.read_bytes())
    # set the "encrypted" flag bit in the central directory record of secret.py
    cd = data.rindex(b"PK\x01\x02")
    assert data[cd + 46 : cd + 46 + 9] == b"secret.py"
    data[cd + 8] |= 0x01
    archive.write_bytes(bytes(data))
    rejected(work, archive, r"'secret\.py'.*encrypted")


@pytest.mark.parametrize(
    "entries",
    [
        [("pkg/__init__.py", b"")],
        [("a/corral.toml", MANIFEST), ("b/corral.toml", MANIFEST)],
        [("a/corral.toml", MANIFEST), ("stray.py", b"")],
        [("corral.toml/", b"")],
        [("a/b/corral.toml", MANIFEST)],
        [],
    ],
)
def test_missing_manifest(work: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> None:
    archive = make_zip(work / "in" / "none.corral", entries)
    rejected(work, archive, r"no corral\.toml")


def test_failure_midway_removes_partial_extraction(work: Path) -> None:
    # the corrupt entry sorts after real files, so some were written before the failure
    archive = make_zip(
        work / "in" / "bad.corral",
        [("corral.toml", MANIFEST), ("a/ok.py", b"x = 1\n"), ("z.bin", b"A" * 5000)],
        compression=zipfile.ZIP_STORED,
    )
    data = bytearray(archive.read_bytes())
    data[data.index(b"A" * 5000) + 1] = ord("B")
    archive.write_bytes(bytes(data))
    rejected(work, archive, r"'z\.bin'.*corrupt")


def test_central_directory_size_is_read_from_the_zip64_record_and_an_empty_archive() -> None:
    import io
    import struct

    from corral._disk.archive import _central_directory_size

    # A ZIP64 archive declares its real central directory size in the ZIP64 end
    # record; the classic end record's 0xFFFFFFFF must not hide 10**12 bytes.
    record = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, 1, 1, 10**12, 0)
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, 0, 1)
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    assert _central_directory_size(io.BytesIO(record + locator + end)) == 10**12
    assert _central_directory_size(io.BytesIO(end)) == 0xFFFFFFFF  # no ZIP64 locator
    # An empty archive is just its end record (at offset 0): size 0, not unreadable.
    empty = io.BytesIO()
    zipfile.ZipFile(empty, "w").close()
    assert _central_directory_size(empty) == 0
    assert _central_directory_size(io.BytesIO(b"not a zip at all")) is None
