"""``PluginInfo``: what ``list`` and ``info`` report about one plugin."""

from __future__ import annotations

from typing import Any, NamedTuple, final

__all__ = ["PluginInfo"]


@final
class PluginInfo(NamedTuple):
    """A snapshot of one plugin: identity, state and what it offers.

    Built from the host database without importing plugin code.
    """

    id: str
    name: str
    version: str
    state: str
    source: str
    path: str
    description: str = ""
    category: str | None = None
    tags: tuple[str, ...] = ()
    isolation: str = "strict"
    capabilities: tuple[str, ...] = ()
    error: dict[str, Any] | None = None
    manifest: dict[str, Any] = {}  # noqa: RUF012 (never mutated; the stored manifest table)
    #: Registered with ``--link``: it runs from the author's folder (``path``), not a copy.
    linked: bool = False

    @classmethod
    def from_manifest_dict(
        cls,
        manifest: dict[str, Any],
        *,
        state: str,
        source: str,
        path: str,
        error: dict[str, Any] | None = None,
        linked: bool = False,
    ) -> PluginInfo:
        """Build from a stored (already validated) manifest table."""
        plugin = manifest["plugin"]
        caps = {f"export:{name}" for name in manifest.get("exports", {})}
        caps.update(f"micro:{m['type']}" for m in manifest.get("micro", []))
        if plugin.get("entry"):
            caps.add("hooks")
        return cls(
            id=plugin["id"],
            name=plugin["name"],
            version=plugin["version"],
            state=state,
            source=source,
            path=path,
            description=plugin.get("description", ""),
            category=plugin.get("category"),
            tags=tuple(plugin.get("tags", ())),
            isolation=manifest.get("sandbox", {}).get("isolation", "strict"),
            capabilities=tuple(sorted(caps)),
            error=error,
            manifest=manifest,
            linked=linked,
        )

    def __repr__(self) -> str:
        return f"PluginInfo(id={self.id!r}, version={self.version!r}, state={self.state!r})"

    def to_dict(self, *, full: bool = False) -> dict[str, Any]:
        """JSON form; ``full`` adds permissions, exports, micro-plugins, dependencies, sandbox."""
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "state": self.state,
            "description": self.description,
            "category": self.category,
            "tags": list(self.tags),
            "isolation": self.isolation,
            "capabilities": list(self.capabilities),
            "source": self.source,
            "path": self.path,
            "linked": self.linked,
        }
        if self.error:
            out["error"] = self.error
        if full:
            m = self.manifest
            out["permissions"] = m.get("permissions", {})
            out["exports"] = m.get("exports", {})
            out["micro"] = m.get("micro", [])
            out["dependencies"] = m.get("dependencies", {})
            out["sandbox"] = m.get("sandbox", {})
            out["requires_corral"] = m["plugin"].get("requires-corral", "")
            out["license"] = m["plugin"].get("license")
            out["authors"] = m["plugin"].get("authors", [])
        return out
