"""Allows ``python -m gpumeter``."""

from gpumeter.cli import main

raise SystemExit(main())
