"""``python -m bora_ref.experiments``: see `bora_ref.experiments.experiment.main`."""

import sys

from .experiment import main

sys.exit(main())
