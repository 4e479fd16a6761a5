"""``python -m crmsync.demo``: the SQLite demo (``make demo``)."""

import sys

from crmsync.demo.sqlite import main

sys.exit(main())
