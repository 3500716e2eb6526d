"""The model layer: manifests, permissions, lifecycle, versions, data types; pure data, no I/O."""
