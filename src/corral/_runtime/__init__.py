"""The host's machinery: the host database, discovery, loading, the lifecycle and the call path."""
