"""Kept for old command lines: `python -m utils.build_tfrecords` runs the converter."""

import sys

from utils.core.errors import run_tool
from utils.tools.build_tfrecords import main

if __name__ == "__main__":
    sys.exit(run_tool(main))
