"""``python -m actorflow.cli``: the ``actorflow`` command."""

import sys

from actorflow.cli import main

if __name__ == "__main__":
    sys.exit(main())
