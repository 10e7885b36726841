"""Loss and Accuracy: torch parity, numerical gradients, display averaging, top-k, errors."""
import numpy as np
import pytest

from gradcheck import Source, numerical_gradient
from nnkit.layers import Accuracy, Loss
from nnkit.layers.loss import LOSSES


class NoGradSource(Source):
    """A source that, like an input layer, takes no gradient."""

    accepts_grad = False


def check_loss_gradient(loss, predictions, labels, rtol=1e-6, atol=1e-8):
    """Compares the gradient ``loss`` sends to the predictions with d(loss.loss)/d(predictions)."""
    pred, lab = Source(np.array(predictions, np.float64)), NoGradSource(labels)
    loss.ComputeFeature(pred, lab)
    loss.ComputeGradient()
    analytic = pred.grad.copy()

    def value():
        loss.ComputeFeature(pred, lab)
        return loss.loss

    numeric = numerical_gradient(value, pred.data)
    assert analytic.shape == pred.data.shape
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol)


def test_softmaxloss_numerical_gradient():
    rng = np.random.default_rng(0)
    check_loss_gradient(Loss("softmaxloss"), rng.standard_normal((4, 5)), np.array([0, 4, 2, 2]))


def test_softmaxloss_numerical_gradient_4d_predictions():
    rng = np.random.default_rng(1)
    check_loss_gradient(Loss("softmaxloss"), rng.standard_normal((3, 2, 2, 2)), np.array([7, 0, 3]))


@pytest.mark.parametrize("target_shape", [(4, 3), (4, 1, 3)])
def test_euclideanloss_numerical_gradient(target_shape):
    rng = np.random.default_rng(2)
    check_loss_gradient(Loss("euclideanloss"), rng.standard_normal((4, 3)),
                        rng.standard_normal(target_shape))


def test_euclideanloss_formula_with_integer_targets():
    p = np.array([[0.5], [2.0], [-1.0]], np.float32)
    t = np.array([1, 2, 0])  # LabelInput-style int64 (N,) labels as regression targets
    loss, pred = Loss("euclideanloss"), Source(p)
    loss.ComputeFeature(pred, NoGradSource(t))
    assert loss.loss == pytest.approx((0.25 + 0 + 1) / (2 * 3)) and loss.accuracy is None
    assert float(loss.data) == pytest.approx(loss.loss)
    loss.ComputeGradient()
    np.testing.assert_allclose(pred.grad, (p - t[:, None]) / 3, rtol=1e-6)


@pytest.mark.parametrize("dtype,shape", [(np.float32, (8, 10)), (np.float64, (8, 10)),
                                         (np.float32, (5, 3, 2, 2))])
def test_softmaxloss_parity_with_torch_cross_entropy(dtype, shape):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    k = int(np.prod(shape[1:]))
    labels = rng.integers(0, k, shape[0])
    loss, pred = Loss("softmaxloss"), Source(x)
    loss.ComputeFeature(pred, NoGradSource(labels))
    loss.ComputeGradient()
    xt = torch.tensor(x.reshape(shape[0], k), requires_grad=True)
    ref = torch.nn.functional.cross_entropy(xt, torch.tensor(labels))
    ref.backward()
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert loss.loss == pytest.approx(ref.item(), rel=tol)
    np.testing.assert_allclose(pred.grad.reshape(shape[0], k), xt.grad.numpy(), rtol=tol,
                               atol=tol * 1e-2)
    assert pred.grad.shape == shape and pred.grad.dtype == dtype
    argmax_hits = (x.reshape(shape[0], k).argmax(1) == labels).mean()  # no ties in random data
    assert loss.accuracy == pytest.approx(argmax_hits)


def test_softmaxloss_is_stable_for_huge_scores():
    x = np.array([[1000.0, 0.0, -1000.0], [0.0, 2000.0, 0.0]], np.float32)
    loss = Loss("softmaxloss")
    loss.ComputeFeature(Source(x), NoGradSource(np.array([2, 1])))
    assert loss.loss == pytest.approx(1000.0)  # (2000 + 0) / 2: finite, no overflow
    assert loss.accuracy == 0.5


def test_display_averages_weighted_by_batch_size_and_resets(capsys):
    loss = Loss("softmaxloss")
    batches = [(np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]]), np.array([0, 0, 0])),
               (np.array([[0.0, 5.0]]), np.array([1]))]
    losses, hits = [], 0
    for x, y in batches:
        loss.ComputeFeature(Source(x), NoGradSource(y))
        e = np.exp(x - x.max(1, keepdims=True))
        losses += list(-np.log(e[np.arange(len(y)), y] / e.sum(1)))
        hits += int((x.argmax(1) == y).sum())
    assert loss.display() == (pytest.approx(np.mean(losses)), pytest.approx(hits / 4))
    assert capsys.readouterr().out == f"loss = {np.mean(losses):.4f}, accuracy = {hits / 4:.4f}\n"
    assert hits / 4 == 0.75  # the batch means (2/3 and 1) would average to 0.8333
    assert loss.display() == (None, None)  # reset: nothing since the last display


def test_display_euclidean_prints_only_the_loss(capsys):
    loss = Loss("euclideanloss")
    loss.ComputeFeature(Source(np.array([[1.0], [3.0]])), NoGradSource(np.array([0.0, 1.0])))
    assert loss.display() == (pytest.approx((1 + 4) / (2 * 2)), None)
    assert capsys.readouterr().out == "loss = 1.2500\n"


SCORES = np.array([[0.1, 0.5, 0.3, 0.2],    # label 2: second highest
                   [0.9, 0.1, 0.0, 0.0],    # label 0: highest
                   [0.2, 0.2, 0.2, 0.4],    # label 0: tied second with 1 and 2
                   [0.1, 0.2, 0.3, 0.4]])   # label 0: lowest
LABELS = np.array([2, 0, 0, 0])


@pytest.mark.parametrize("topk,expected", [(1, 0.25), (2, 0.75), (3, 0.75), (4, 1.0)])
def test_accuracy_topk(topk, expected):
    acc = Accuracy(topk)
    acc.ComputeFeature(Source(SCORES), NoGradSource(LABELS))
    assert acc.accuracy == pytest.approx(expected)
    assert float(acc.data) == pytest.approx(expected)


def test_ties_count_in_the_labels_favour():
    scores = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 2.0, 2.0]])
    acc = Accuracy(1)
    acc.ComputeFeature(Source(scores), NoGradSource(np.array([1, 2, 0])))
    assert acc.accuracy == pytest.approx(2 / 3)  # rows 0 and 1: the label ties for the max
    loss = Loss("softmaxloss")
    loss.ComputeFeature(Source(scores), NoGradSource(np.array([1, 2, 0])))
    assert loss.accuracy == acc.accuracy  # Loss's top-1 follows the same convention


def test_accuracy_sends_no_gradient():
    pred = Source(SCORES.copy())
    acc = Accuracy(2)
    acc.ComputeFeature(pred, NoGradSource(LABELS))
    acc.ComputeGradient()
    assert pred.grad is None


def test_float_labels_that_are_whole_numbers_are_accepted():
    loss = Loss()
    loss.ComputeFeature(Source(SCORES), NoGradSource(np.array([[2.0], [0.0], [0.0], [0.0]])))
    assert loss.accuracy == 0.25


def test_get_config():
    assert Loss("euclideanloss", name="l").get_config() == {"lossname": "euclideanloss",
                                                            "name": "l"}
    assert Accuracy(5, name="a").get_config() == {"topk": 5, "name": "a"}


# ----------------------------------------------------------------------------- errors
def compute(layer, scores, labels):
    layer.ComputeFeature(Source(np.asarray(scores, np.float32)), NoGradSource(labels))


@pytest.mark.parametrize("layer", [Loss("softmaxloss", name="loss"), Accuracy(name="acc")])
def test_label_count_must_match_batch(layer):
    with pytest.raises(ValueError, match=rf"'{layer.name}': got 3 labels \(shape \(3,\)\).*"
                                         r"predictions of shape \(4, 4\)"):
        compute(layer, SCORES, np.array([0, 1, 2]))


@pytest.mark.parametrize("bad,index", [(4, 1), (-1, 3)])
def test_labels_out_of_range_name_value_and_index(bad, index):
    labels = LABELS.copy()
    labels[index] = bad
    with pytest.raises(ValueError, match=rf"Loss 'loss': label {bad} at index {index} .* out of "
                                         r"range \[0, 4\) for predictions of shape \(4, 4\)"):
        compute(Loss(name="loss"), SCORES, labels)


def test_non_integer_labels():
    with pytest.raises(ValueError, match=r"Loss 'loss': label 1.5 at index 2 .* not a whole "
                                         r"number"):
        compute(Loss(name="loss"), SCORES, np.array([0.0, 1.0, 1.5, 2.0]))
    with pytest.raises(TypeError, match=r"Accuracy 'acc': labels .* must be integers, got dtype "
                                        r"complex128"):
        compute(Accuracy(name="acc"), SCORES, LABELS.astype(complex))


def test_prediction_never_computed():
    with pytest.raises(RuntimeError, match=r"Loss 'loss': prediction layer Source 'source' has "
                                           r"no data"):
        Loss(name="loss").ComputeFeature(Source(None), NoGradSource(LABELS))


def test_label_layer_missing_or_never_fed():
    with pytest.raises(TypeError, match=r"Loss 'loss': .*label layer is missing"):
        Loss(name="loss").ComputeFeature(Source(SCORES))
    with pytest.raises(RuntimeError, match=r"Accuracy 'acc': label layer .* has no data"):
        Accuracy(name="acc").ComputeFeature(Source(SCORES), NoGradSource(None))


def test_prediction_must_have_a_class_axis():
    with pytest.raises(ValueError, match=r"Loss 'loss': predictions .* shape \(4,\)"):
        compute(Loss(name="loss"), SCORES[:, 0], LABELS)


def test_euclidean_target_shape_mismatch():
    with pytest.raises(ValueError, match=r"Loss 'l2': target of shape \(4, 3\) .* predictions of "
                                         r"shape \(4, 4\): need 4 rows of 4 values"):
        compute(Loss("euclideanloss", name="l2"), SCORES, np.zeros((4, 3)))


def test_compute_gradient_before_compute_feature():
    with pytest.raises(RuntimeError, match=r"Loss 'loss': ComputeGradient called before"):
        Loss(name="loss").ComputeGradient()


def test_unknown_loss_and_bad_topk():
    with pytest.raises(ValueError, match=r"Loss 'x': unknown loss 'hinge'; expected one of "
                                         r"softmaxloss, euclideanloss"):
        Loss("hinge", name="x")
    with pytest.raises(ValueError, match=r"Accuracy 'acc': topk must be a positive integer"):
        Accuracy(0, name="acc")
    with pytest.raises(ValueError, match=r"Accuracy 'acc': topk=5 exceeds the 4 classes"):
        compute(Accuracy(5, name="acc"), SCORES, LABELS)


@pytest.mark.parametrize("lossname", LOSSES)
def test_display_is_exactly_the_batch_size_weighted_mean_of_the_batch_values(lossname, capsys):
    loss, rng = Loss(lossname), np.random.default_rng(3)
    loss_sum = acc_sum = 0.0
    for n in (5, 1, 7, 3):
        x = rng.standard_normal((n, 4))
        y = rng.integers(0, 4, n) if lossname == "softmaxloss" else rng.standard_normal((n, 4))
        loss.ComputeFeature(Source(x), NoGradSource(y))
        loss_sum += loss.loss * n  # the Keras rule, summed in batch order
        acc_sum += (loss.accuracy or 0.0) * n
    mean_loss, mean_acc = loss.display()
    assert mean_loss == loss_sum / 16  # bitwise: the same sums in the same order
    assert mean_acc == (acc_sum / 16 if lossname == "softmaxloss" else None)
