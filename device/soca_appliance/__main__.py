"""``python -m soca_appliance`` is the same as the ``soca-appliance`` command."""
import sys

from .cli import main

sys.exit(main())
