"""``python -m nanostream``: the same command as the ``nanostream`` script."""

import sys

from nanostream.cli import main

sys.exit(main())
