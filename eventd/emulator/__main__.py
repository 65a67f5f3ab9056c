"""`python -m eventd.emulator` runs the emulator in the foreground."""

from eventd.emulator.cli import main

raise SystemExit(main())
