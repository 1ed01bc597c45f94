"""Fault hooks: the only places where a test can make ngram-dask die or stall on purpose.

The fault tests (``tests/*/test_faults.py``, ``tests/lm/test_score.py``,
``tests/lm/test_scan.py``) run real processes and set one environment variable to
stop one at a chosen point, then check that a rerun finishes with exactly the result
of a clean run. With none of these variables set, every hook is one dictionary lookup.

=====================================  =====================================================
variable                                what it does
=====================================  =====================================================
``NGRAM_DASK_CRASH_IN_LOAD=n:chunk``    the build's client exits inside the load transaction
                                        that holds chunk ``chunk`` of ``n`` (nothing commits)
``NGRAM_DASK_CRASH_AFTER_LOAD=n:chunk`` ... right after that transaction commits
``NGRAM_DASK_CRASH_IN_AGGREGATE=n:chunk:range``
                                        the worker aggregating chunk ``chunk`` of ``n`` exits
                                        after writing key range ``range`` of it (not the last)
``NGRAM_DASK_CRASH_IN_SCORE=<column>``  ``score`` exits once the first results of the model
                                        stored as ``<column>`` arrived
``NGRAM_DASK_CRASH_IN_SCORE=<column>:write``
                                        ... inside that model's write transaction, after its
                                        first table
``NGRAM_DASK_SCAN_TEST_DELAY=<seconds>``
                                        each scan task sleeps this long before writing its
                                        part (so a test can kill a worker mid-scan)
``NGRAM_DASK_CRASH_IN_CONTEXTS=write``  ``contexts`` exits inside its write transaction, after
                                        the contexts rows are inserted (nothing commits)
``NGRAM_DASK_CRASH_IN_CONTEXTS=exposure``
                                        ``exposure`` exits once the first unit's result has
                                        arrived (its part and marker are written)
``NGRAM_DASK_CONTEXTS_TEST_DELAY=<s>``  each contexts task sleeps this long before writing its
                                        parts (so a test can kill the client mid-stage)
=====================================  =====================================================

A crash is ``os._exit(86)``: no ``finally`` block, no atexit handler, no flush, as
when the machine loses power or the kernel kills the process.
"""

from __future__ import annotations

import os
import time

CRASH_EXIT_CODE = 86

CRASH_IN_LOAD = "NGRAM_DASK_CRASH_IN_LOAD"
CRASH_AFTER_LOAD = "NGRAM_DASK_CRASH_AFTER_LOAD"
CRASH_IN_AGGREGATE = "NGRAM_DASK_CRASH_IN_AGGREGATE"
CRASH_IN_SCORE = "NGRAM_DASK_CRASH_IN_SCORE"
SCAN_TEST_DELAY = "NGRAM_DASK_SCAN_TEST_DELAY"
CRASH_IN_CONTEXTS = "NGRAM_DASK_CRASH_IN_CONTEXTS"
CONTEXTS_TEST_DELAY = "NGRAM_DASK_CONTEXTS_TEST_DELAY"


def crash_point(variable: str, where: str) -> None:
    """Exit this process at once when ``$variable`` equals ``where``."""
    if os.environ.get(variable) == where:
        os._exit(CRASH_EXIT_CODE)


def delay_point(variable: str) -> None:
    """Sleep ``$variable`` seconds, when it is set."""
    seconds = float(os.environ.get(variable) or 0)
    if seconds:
        time.sleep(seconds)
