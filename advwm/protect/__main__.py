"""`python -m advwm.protect`: see `advwm.protect.cli`."""

from advwm.protect.cli import main

raise SystemExit(main())
