"""Train, evaluate, benchmark and export ResNet50 v1.5 / ResNeXt101-32x4d / SE-ResNeXt101-32x4d.

Parses the command line (`utils/cmdline_helper.py`) and hands over to `runtime/runner.py`.
User errors end with one line on stderr and a non-zero exit, never a traceback.
"""

import os
import sys

from utils.cmdline_helper import parse_cmdline
from utils.core import perf_env
from utils.core.errors import UserError


def main(argv=None):
    args = parse_cmdline(argv)
    # Keep TensorFlow's C++ start-up chatter out of the user's log unless asked for.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        perf_env.configure(args.mode)  # before TensorFlow is imported
        from runtime import runner

        return runner.run(args)
    except UserError as error:
        print(f"main.py: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("main.py: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
