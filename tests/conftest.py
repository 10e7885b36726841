"""Suite-wide fixtures."""
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
