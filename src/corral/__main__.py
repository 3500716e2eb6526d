"""``python -m corral``: the command line."""

from corral._cli import main

raise SystemExit(main())
