"""The ``corral`` command line: a thin face over the library (entry point :mod:`.main`)."""
