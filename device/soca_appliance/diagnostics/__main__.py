"""``python -m soca_appliance.diagnostics``: what ``scripts/soca-diag`` runs from a checkout."""
from __future__ import annotations

import sys

from .runner import main

sys.exit(main())
