"""What the installer knows of a published plugin version, and where it comes from.

A :class:`Release` is one version of one plugin as a source (a registry read
through TUF metadata, or a folder of archives) describes it: enough to resolve
dependencies and to check the artifact before anything is unpacked.  A
:class:`Source` lists releases and fetches their archives; the resolver and
the installer only ever talk to this protocol.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from corral._errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path

__all__ = ["Release", "Requirement", "Source", "parse_requirement"]


@dataclass(frozen=True)
class Release:
    """One version of one plugin, as a source describes it.

    ``dependencies`` maps plugin ids to PEP 440 ranges (the manifest's
    ``[dependencies]``); ``sha256``/``size`` are those of the ``.corral``
    archive; ``signer`` is the keyid of the Ed25519 key the archive's file
    manifest is signed with (``None``: unsigned) and ``publisher_verified``
    says whether the source vouches for that key as a verified publisher's.
    """

    id: str
    version: str
    dependencies: Mapping[str, str] = field(default_factory=dict)
    requires_corral: str = ""
    yanked: bool = False
    sha256: str | None = None
    size: int | None = None
    permissions: Mapping[str, Any] = field(default_factory=dict)
    publisher: str | None = None
    signer: str | None = None
    publisher_verified: bool = False
    #: the manifest's ``[sandbox] isolation`` (``None``: the source did not say)
    isolation: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible copy (one name for one thing: the manifest's keys)."""
        return {
            "id": self.id,
            "version": self.version,
            "dependencies": dict(self.dependencies),
            "requires-corral": self.requires_corral,
            "yanked": self.yanked,
            "sha256": self.sha256,
            "size": self.size,
            "permissions": dict(self.permissions),
            "publisher": self.publisher,
            "signer": self.signer,
            "publisher-verified": self.publisher_verified,
            **({"isolation": self.isolation} if self.isolation is not None else {}),
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Release:
        """The inverse of :meth:`to_dict` (absent keys take their defaults)."""
        return cls(
            id=doc["id"], version=doc["version"], dependencies=doc.get("dependencies") or {},
            requires_corral=doc.get("requires-corral") or "", yanked=bool(doc.get("yanked")),
            sha256=doc.get("sha256"), size=doc.get("size"),
            permissions=doc.get("permissions") or {}, publisher=doc.get("publisher"),
            signer=doc.get("signer"), publisher_verified=bool(doc.get("publisher-verified")),
            isolation=doc.get("isolation"),
        )


class Source(Protocol):
    """Where releases come from: a registry through TUF, or a folder of archives."""

    #: A short name for messages and the lock file (a URL or a path).
    location: str

    def releases(self, plugin_id: str) -> Sequence[Release]:
        """Every release of ``plugin_id``, yanked ones included.

        Raises:
            NotFoundError: the source has no such plugin.
            TransferError: the source could not be read.
        """
        ...

    def fetch(
        self,
        release: Release,
        dest_dir: Path,
        progress: Callable[[int, int], None] | None = None,
    ) -> Path:
        """Download ``release``'s archive into ``dest_dir`` and return its path.

        The bytes are checked against ``release.sha256`` and ``release.size``
        while they arrive: more bytes than announced stop the transfer.
        ``progress(done, total)`` is called as bytes arrive.

        Raises:
            SignatureInvalid: the bytes do not match the announced hash or size.
            TransferError: the connection failed, stalled or was cut short.
        """
        ...


_REQ = re.compile(r"^\s*(?P<id>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:@\s*(?P<spec>.*?))?\s*$")
_BARE_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+!-]*$")


@dataclass(frozen=True)
class Requirement:
    """A plugin the user asked for, with a PEP 440 range (``""``: any version)."""

    id: str
    spec: str = ""

    def __str__(self) -> str:
        return f"{self.id}@{self.spec}" if self.spec else self.id


def parse_requirement(text: str) -> Requirement:
    """Parse ``ID``, ``ID@1.2.0`` (exactly that version) or ``ID@>=1.2,<2``.

    Raises:
        UsageError: not of that shape, or not a valid range.
    """
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    m = _REQ.match(text)
    if m is None:
        raise UsageError(f"{text!r}: expected ID, ID@VERSION or ID@RANGE", requirement=text)
    spec = (m.group("spec") or "").strip()
    if m.group("spec") is not None and not spec:
        raise UsageError(f"{text!r}: nothing after '@'", requirement=text)
    if _BARE_VERSION.match(spec):
        spec = f"=={spec}"
    try:
        SpecifierSet(spec)
    except InvalidSpecifier:
        raise UsageError(f"{text!r}: {spec!r} is not a version range", requirement=text) from None
    return Requirement(m.group("id"), spec)
