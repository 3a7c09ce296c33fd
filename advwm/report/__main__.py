"""`python -m advwm.report ...`: see `advwm.report.cli`."""

from advwm.report.cli import main

raise SystemExit(main())
