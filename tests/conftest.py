"""Suite-wide fixtures."""
import os
import shutil
import tempfile

import pytest

from nnkit.training import live_runs


@pytest.fixture(autouse=True)
def no_run_outlives_its_test():
    """Shuts down background runs a test left lingering, so none trains during later tests
    (holding the kernel helpers and the BLAS thread limit that other tests measure)."""
    yield
    for run in live_runs():
        run.shutdown()
        run.join(60)


# NNKIT_HOME in a temporary directory, set when this file is imported: before any test module
# is (several copy os.environ into an ENV for their subprocesses at import), so that every run
# the suite trains, in this process or a child, is recorded there and never in ~/.nnkit.
_SESSION_HOME = tempfile.mkdtemp(prefix="nnkit-home-")
os.environ["NNKIT_HOME"] = _SESSION_HOME


@pytest.fixture(autouse=True, scope="session")
def nnkit_home_of_the_session():
    """The suite's NNKIT_HOME (see above), deleted at the end of the session."""
    yield _SESSION_HOME
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)
