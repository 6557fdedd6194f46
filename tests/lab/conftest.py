"""Fixtures for lab tests: one booted lab of real kernels per test session, torn down at the end."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dvsan_lab import Lab, LabError, PreflightError
from dvsan_lab.lab import format_status

LAB_TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/lab gets the `lab` marker, so `-m 'not lab'` skips them all."""
    for item in items:
        if LAB_TESTS in item.path.resolve().parents:
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """The booted lab: unit-a, host-b, host-c answering on their exec channels.

    With DVSAN_LAB_REUSE=1 an already-running lab (`dvsan-lab up`) is used and left running.
    A lab that cannot boot fails the tests (with what is missing), never skips them: a skipped
    data-path test proves nothing.
    """
    lab = Lab()
    if os.environ.get("DVSAN_LAB_REUSE") == "1" and lab.status().up:
        yield lab
        return
    failure = None
    try:
        lab.preflight()
        lab.up()
    except PreflightError as e:
        failure = str(e)
    except LabError as e:
        failure = (
            f"{e}\n(status now:\n{format_status(lab.status())})\n"
            "if a lab from an earlier run is still up: DVSAN_LAB_REUSE=1 to use it, "
            "or `dvsan-lab down`"
        )
    if failure is not None:
        # NOTE: outside the except block, so pytest shows the message once, not a chained traceback.
        pytest.fail(failure, pytrace=False)
    try:
        yield lab
    finally:
        lab.down()
