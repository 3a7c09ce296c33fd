"""`python -m advwm.weights list|check|fetch`: see `advwm.weights.cli`."""

import os
import sys

from advwm.weights.cli import main

try:
    sys.exit(main())
except BrokenPipeError:  # `... | head`: stop quietly, as other command-line tools do
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(1)
