"""The issue's per-layer CNN loop (conv, pooling, LRN, dense) learns real CIFAR-10."""
import pytest

from helpers import DATA, load_example

example = load_example("train_cifar10")
import common  # noqa: E402  (examples/ is on the path now)

pytestmark = pytest.mark.skipif(not (DATA / "cifar10").is_dir(), reason="needs ../shared/data/cifar10")


@pytest.mark.slow
def test_150_batches_of_the_manual_schedule_learn():
    (x, y), (xt, yt) = example.load(DATA)
    nn = example.build_cnn(seed=0)
    sgd = example.make_updater()  # momentum 0.9, decay 0.004, manual schedule at 0.001
    common.train_per_layer(nn, sgd, x, y, bsize=100, steps=150, disp_freq=10**9)
    assert sgd.lr == pytest.approx(0.001)
    accuracy = common.evaluate_per_layer(nn, xt[:2000], yt[:2000])
    print(f"150 batches: test accuracy {accuracy:.4f}")
    assert accuracy > 0.30  # chance is 0.10; measured 0.40 at this point
