"""Exact resume: N batches, checkpoint, a new process, M more == N+M straight, bit for bit.

Also for a model with BatchNormalization, whose running statistics are layer state.
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# Dropout, shuffling, momentum and a decaying schedule: every piece of state must come back.
SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    import nnkit
    from nnkit import SGD, Activation, BatchNormalization, Dense, Dropout, Sequential
    from test_model import toy_data

    mode, ckpt, out, net = sys.argv[1:5]
    x, y = toy_data(250)

    def build():
        norm = [BatchNormalization(momentum=0.9)] if net == "bn" else []
        model = Sequential([Dense(32, init="gaussian", w_std=0.1), *norm, Activation("relu"),
                            Dropout(0.3), Dense(4, init="gaussian", w_std=0.1)],
                           input_shape=(20,), seed=11)
        model.compile(SGD(lr=0.05, momentum=0.9, decay=1e-3, lr_type="step", gamma=0.9,
                          change_freq=4), "softmaxloss", ["accuracy"])
        return model

    if mode == "straight":
        model = build()
        model.fit(x, y, batch_size=32, steps=21, verbose=0)
    elif mode == "first":
        model = build()
        model.fit(x, y, batch_size=32, steps=11, verbose=0)  # stops mid-epoch (8 batches each)
        model.save(ckpt)
    elif mode == "load":
        model = nnkit.load(ckpt)
        model.fit(x, y, batch_size=32, steps=10, verbose=0)
    elif mode == "fit_resume":  # the interrupted call, repeated with resume=: totals
        model = build()
        model.fit(x, y, batch_size=32, steps=21, verbose=0, resume=ckpt)
    state = {{"state:" + k: v for k, v in model.state_arrays().items()}}
    np.savez(out, *model.get_weights(), step=model.trainer.global_step,
             loss=np.array(model.trainer.history.history.get("loss", [])), **state)
""")


def run(mode: str, tmp_path: Path, net: str = "mlp") -> dict:
    out = tmp_path / f"{mode}.npz"
    script = tmp_path / "job.py"
    script.write_text(SCRIPT.format(tests=str(ROOT / "tests")))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, str(script), mode, str(tmp_path / "ckpt.h5"), str(out), net],
                   check=True, env=env, timeout=120)
    return dict(np.load(out))


@pytest.mark.parametrize("resume_mode,net", [("load", "mlp"), ("fit_resume", "mlp"), ("load", "bn")])
def test_resumed_training_is_bit_identical_to_straight_training(tmp_path, resume_mode, net):
    straight = run("straight", tmp_path, net)
    run("first", tmp_path, net)
    resumed = run(resume_mode, tmp_path, net)
    assert int(resumed["step"]) == int(straight["step"]) == 21
    arrays = [k for k in straight if k.startswith(("arr_", "state:"))]
    assert len(arrays) == (4 if net == "mlp" else 8)  # BN: weight, bias, moving mean and variance
    for key in arrays:
        np.testing.assert_array_equal(resumed[key], straight[key], err_msg=key)
    # the epoch means include the batches before the checkpoint too
    np.testing.assert_array_equal(resumed["loss"], straight["loss"])
