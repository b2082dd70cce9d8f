"""Kept for old command lines: `python -m utils.sample_data` runs `utils.tools.sample_data`."""

import sys

from utils.core.errors import run_tool
from utils.tools.sample_data import main

if __name__ == "__main__":
    sys.exit(run_tool(main))
