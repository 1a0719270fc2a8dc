"""Runs a peer driver's ``main`` and leaves without interpreter teardown (standard library only).

The peers' SDKs keep threads and event-loop resources that can hang or abort the interpreter at
exit (temporalio/sdk-python#300, grpc's asyncio channels, Hatchet's listener tasks). Everything
worth keeping is written by the time ``main`` returns, so the process ends with ``os._exit``.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable


def run_and_exit_hard(main: Callable[[], int]) -> None:
    try:
        code = main()
    except KeyboardInterrupt:
        code = 130
    except SystemExit as exc:  # argparse errors and --help
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
