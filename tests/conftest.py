"""Suite-wide fixtures."""
import os

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


@pytest.fixture(autouse=True, scope="session")
def nnkit_home_of_the_session(tmp_path_factory):
    """NNKIT_HOME in a temporary directory for the whole session: every run a test records goes
    to its experiment store, never the user's ~/.nnkit (subprocesses inherit the variable)."""
    old = os.environ.get("NNKIT_HOME")
    os.environ["NNKIT_HOME"] = str(tmp_path_factory.mktemp("nnkit-home"))
    yield os.environ["NNKIT_HOME"]
    if old is None:
        os.environ.pop("NNKIT_HOME", None)
    else:
        os.environ["NNKIT_HOME"] = old
