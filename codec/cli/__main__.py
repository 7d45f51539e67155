"""`python -m codec.cli`: the `moec` command."""

import sys

from codec.cli import main

sys.exit(main())
