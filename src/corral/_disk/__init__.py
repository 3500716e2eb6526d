"""Files on disk: the names of a home, durable writes, archives and plugin trees."""
