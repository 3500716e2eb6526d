"""The host's machinery: the host database, discovery, loading and running plugin code."""
