"""``python -m soca_appliance.bench``: the bench's command line (also the control probe's)."""
import sys

from .command import main

sys.exit(main())
