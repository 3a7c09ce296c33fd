"""`python -m advwm.protect`: see `advwm.protect.cli`."""

from advwm.protect.cli import main
from advwm.run_files.signals import ending_cleanly

with ending_cleanly():  # SIGTERM/SIGINT: one line (each photo written is whole), exit status 128 + the signal
    raise SystemExit(main())
