"""A module a test names as a fork server's extra preload: importing it takes a while and says
when it starts (in the file named by SLOW_PRELOAD_MARKER), so a signal can land mid-import."""

import os
import time
from pathlib import Path

Path(os.environ["SLOW_PRELOAD_MARKER"]).write_text("importing")
time.sleep(float(os.environ.get("SLOW_PRELOAD_SECONDS", "1.5")))
