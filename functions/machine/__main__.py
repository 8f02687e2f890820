"""`python -m functions.machine`: run one function machine (see functions/machine/__init__.py)."""

import sys

from .main import main

sys.exit(main())
