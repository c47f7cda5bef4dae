"""``python -m autosculpt.search.cli``: the same as the ``autosculpt`` console script."""

import sys

from . import main

sys.exit(main())
