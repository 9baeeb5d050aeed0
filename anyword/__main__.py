"""``python -m anyword``: the command line (what ``accelerate launch -m anyword eval ...`` starts per process)."""

import sys

from anyword.cli import main

sys.exit(main())
