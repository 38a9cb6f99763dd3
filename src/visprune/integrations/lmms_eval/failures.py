"""Failures under lmms-eval's command line: a non-zero exit instead of its status 0.

lmms-eval's command line reports an exception of its model class and then exits with status 0;
so when a wrapper fails under that command line (``python -m lmms_eval`` or ``lmms-eval``), the
run stops with a non-zero status instead: 2 and one line for a bad ``--model_args``, 1 and the
traceback for any other failure. Called from Python, the wrappers raise as usual.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import traceback
from collections.abc import Iterator
from typing import Any


def under_lmms_eval_command_line() -> bool:
    """Whether lmms-eval's command line (``cli_evaluate``, which reports a model's exception and
    then exits with status 0) is running this call."""
    suffix = os.path.join("lmms_eval", "__main__.py")
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "cli_evaluate" and code.co_filename.endswith(suffix):
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def failure_stops_the_run(status: int) -> Iterator[None]:
    """Under lmms-eval's command line, turn an exception into an exit with ``status``.

    ``status`` 2 (a bad argument) prints one line; any other status prints the traceback first.
    ``SystemExit`` is not an ``Exception``, so lmms-eval's handler lets it through. Elsewhere
    the exception propagates unchanged.
    """
    try:
        yield
    except Exception as error:
        if not under_lmms_eval_command_line():
            raise
        if status != 2:
            traceback.print_exc()
        print(f"visprune: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        raise SystemExit(status) from error


def stops_the_run_on_failure(request_method):
    """A request method (``generate_until``, ``loglikelihood``) whose failure under lmms-eval's
    command line ends the run with status 1 rather than 0."""

    @functools.wraps(request_method)
    def run(*args: Any, **kwargs: Any) -> Any:
        with failure_stops_the_run(status=1):
            return request_method(*args, **kwargs)

    return run
