"""`python -m advwm.protect`: see `advwm.protect.cli`."""

from advwm.protect.cli import main
from advwm.run_files.signals import ending_cleanly

with ending_cleanly("protecting photos", kept="each protected photo written so far is whole, the others are not "
                    "written", go_on="run the same command again to protect them all"):  # exit status 128 + n
    raise SystemExit(main())
