"""`python -m tinyseg COMMAND ...` (what torchrun and other launchers call) is the `tinyseg` command."""

import sys

from tinyseg.tools.cli import main

sys.exit(main())
