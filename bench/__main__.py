import sys

from . import INTERRUPTED

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while the command line is still being imported: the same line as later
    print(INTERRUPTED, file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
