"""``python -m byzsgd.cli``: the same as the ``byzsgd`` command."""

import sys

from byzsgd.cli import main

sys.exit(main())
