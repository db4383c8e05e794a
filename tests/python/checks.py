"""How the test scripts fail: one line on stderr naming the script and the problem, exit 1."""

import os
import sys


def fail(message):
    print(f"{os.path.splitext(os.path.basename(sys.argv[0]))[0]}: {message}", file=sys.stderr)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)
