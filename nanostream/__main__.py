"""``python -m nanostream``: the same command as the ``nanostream`` script."""

import sys

from nanostream.cli.main import main

sys.exit(main())
