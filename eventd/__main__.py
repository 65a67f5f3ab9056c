"""`python -m eventd` runs the command line."""

from eventd.cli import main

raise SystemExit(main())
