"""``python -m corral``: the command line."""

from corral._cli.main import main

raise SystemExit(main())
