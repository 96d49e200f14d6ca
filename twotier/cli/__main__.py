"""`python -m twotier.cli …`: the same as the `twotier` script."""

from . import main

raise SystemExit(main())
