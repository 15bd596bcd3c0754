"""`python -m numallm` is the same program as the `numallm` command."""

import sys

from numallm.cli import main

sys.exit(main())
