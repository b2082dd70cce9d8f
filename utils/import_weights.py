"""`python -m utils.import_weights SRC --arch ARCH --output DIR` (utils/tools/import_weights.py)."""

from utils.tools.import_weights import main

if __name__ == "__main__":
    raise SystemExit(main())
