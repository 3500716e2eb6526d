"""The marketplace: server-rendered pages of the registry (see :mod:`.pages`)."""
