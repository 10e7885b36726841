"""The notebook view: its logic headless on real background runs, and executed in a real kernel."""
import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("matplotlib")

from helpers import DATA, ROOT, wait_until
from nnkit.views.notebook import TrainingView
from nnkit.training import LambdaCallback
from test_interactive import slow, start
from test_model import toy_data

PNG = b"\x89PNG\r\n\x1a\n"


def refresh_until(view, predicate, timeout=20.0):
    """Refreshes the view by hand (no event loop runs in a plain test) until ``predicate()``."""
    wait_until(lambda: (view.refresh(), predicate())[1], timeout)


def validated_start(**kwargs):
    """A background run on toy data with a small validation set, so epochs carry a test error."""
    x, y = toy_data(512)
    return start(validation_data=(x[:64], y[:64]), **kwargs)


# ---------------------------------------------------------------------- headless view logic
def test_refresh_updates_the_status_line_and_the_plot_data_from_events():
    run = validated_start(epochs=100, callbacks=[slow(0.01)])
    view = TrainingView(run)  # no running loop here: nothing refreshes until refresh()
    empty_png = bytes(view.plot.value)
    time.sleep(0.3)
    assert view.refresh_count == 0 and view.plot_data["train cost"][0].size == 0
    refresh_until(view, lambda: view.plot_data["test error"][0].size >= 2)
    assert view.status_text.startswith("training · epoch ")
    assert "lr 0.05" in view.status_text and "images/s" in view.status_text
    run.wait_for(run.stop())
    run.join(10)
    view.refresh()  # the run has ended: the last events and a final redraw

    losses = run.events("loss")
    steps, values, averages = view.plot_data["train cost"]
    assert steps.tolist() == [e["step"] for e in losses]
    assert values.tolist() == pytest.approx([e["loss"] for e in losses])
    window = 50  # the default layout's moving average of the train cost
    assert averages[-1] == pytest.approx(sum(values[-window:]) / len(values[-window:]))
    epochs = run.interactive_data()
    assert view.plot_data["train error"][1].tolist() == pytest.approx([e[1] for e in epochs])
    assert view.plot_data["test error"][1].tolist() == pytest.approx([e[2] for e in epochs])
    assert view.plot_data["test error"][0].tolist() == [e["step"] for e in run.events("epoch")]

    # Epochs counted from 1 (events count from 0): "epoch 3" in the third, "epoch 2 done" between.
    epoch = (f"epoch {run.current_epoch} done" if run.current_batch == 0
             else f"epoch {run.current_epoch + 1}")
    assert view.status_text.startswith(f"stopped · {epoch} · batch {run.global_step}")
    assert f"loss {losses[-1]['loss']:.4g}" in view.status_text
    assert "images/s" not in view.status_text  # no stale rate once the run is over
    assert bytes(view.plot.value).startswith(PNG) and bytes(view.plot.value) != empty_png
    assert all(control.disabled for control in view.controls)


def test_buttons_send_commands_through_the_handle_and_show_the_answers():
    run = start(epochs=100, callbacks=[slow(0.02)])
    view = TrainingView(run)
    assert view.lr_field.value == pytest.approx(0.05)  # the updater's rate to start from
    wait_until(lambda: run.global_step >= 2)

    view.lr_field.value = 0.0123
    view.lr_button.click()
    assert view.message_text == "set lr=0.0123: sent, waiting for the next safe point"
    refresh_until(view, lambda: "done" in view.message_text)
    assert view.message_text.startswith("set lr=0.0123: done at batch ")
    acked_at = int(view.message_text.rsplit(" ", 1)[1])
    assert run.model.updater.lr_override == pytest.approx(0.0123)
    refresh_until(view, lambda: "lr 0.0123" in view.status_text)
    assert all(e["lr"] == pytest.approx(0.0123) for e in run.events("loss") if e["step"] > acked_at)

    view.lr_field.value = -1.0  # the run refuses it, says why, and trains on
    view.lr_button.click()
    refresh_until(view, lambda: "error" in view.message_text)
    assert view.message_text == "set lr=-1: error: set lr: must be >= 0, got -1.0"
    assert run.model.updater.lr == pytest.approx(0.0123)

    run.set(batch_size=8)  # a command from elsewhere (the handle, nnkit ctl) shows too
    refresh_until(view, lambda: view.message_text.startswith("set batch_size=8: done at batch"))

    view.pause_button.click()
    refresh_until(view, lambda: view.message_text.startswith("pause: done"))  # the ack follows the status
    assert view.pause_button.description == "Resume" and view.status_text.startswith("paused")
    paused_at = run.global_step
    time.sleep(0.2)
    assert run.global_step == paused_at
    view.pause_button.click()
    refresh_until(view, lambda: view.message_text.startswith("resume: done"))
    assert view.pause_button.description == "Pause" and view.status_text.startswith("training")

    target = run.global_step + 5
    view.until_field.value = target
    view.until_button.click()
    refresh_until(view, lambda: view.status_text.startswith("finished"))
    assert run.global_step == target and f"batch {target}" in view.status_text
    assert not view.stop_button.disabled  # a finished run lingers: it can still be extended

    view.stop_button.click()  # ends the lingering run
    refresh_until(view, lambda: view.stop_button.disabled)
    assert view.message_text.startswith("stop: done at batch ") and run.join(0)
    answered = len(run.events())
    view.pause_button.click()
    assert view.message_text == "the run has ended (stopped); pause not sent"
    time.sleep(0.1)
    assert len(run.events()) == answered


def test_a_failed_run_shows_its_error():
    def boom(batch, logs):
        if batch == 3:
            raise RuntimeError("disk on fire")
    run = start(epochs=10, callbacks=[LambdaCallback(on_batch_end=boom)])
    view = TrainingView(run)
    refresh_until(view, lambda: view.stop_button.disabled)
    assert view.status_text.startswith("failed")
    assert view.message_text == "run: error: RuntimeError: disk on fire"


def test_refreshes_itself_from_the_running_event_loop_never_the_training_thread():
    async def scenario():
        run = start(epochs=100, callbacks=[slow(0.01)])
        view = TrainingView(run, interval=0.05)  # a running loop: the refresh task starts
        threads = set()
        refresh = view.refresh

        def spy():
            threads.add(threading.current_thread())
            return refresh()
        view.refresh = spy
        deadline = time.monotonic() + 30  # a busy machine may run the timer late, not never
        while view.refresh_count < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        counted = view.refresh_count
        assert counted >= 5 and view.status_text.startswith("training")
        view.stop_button.click()
        await asyncio.wait_for(view.start(), 10)  # start() hands back the running task; it ends with the run
        return run, view, threads, counted

    run, view, threads, counted = asyncio.run(scenario())
    assert threads == {threading.current_thread()} and run.status == "stopped"
    assert view.refresh_count > counted and view.status_text.startswith("stopped")
    assert view.message_text.startswith("stop: done at batch")


@pytest.mark.parametrize("module", ["matplotlib", "ipywidgets"])
def test_a_missing_extra_is_a_clear_import_error(module):
    code = textwrap.dedent(f"""
        import sys
        sys.modules[{module!r}] = None  # as if it were not installed
        try:
            import nnkit.views.notebook
        except ImportError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         check=False, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.stdout.strip() == (f"nnkit.views.notebook needs ipywidgets and matplotlib ({module} is missing); "
                                  "install them with: pip install 'nnkit[notebook]'"), out.stderr


# ---------------------------------------------------------------------- in a real kernel
def execute(nb, tmp_path, cwd, env=None, timeout=120):
    """Runs every cell of ``nb`` in a fresh ipykernel of this interpreter; a failing cell raises."""
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    # A private kernelspec: this interpreter, this checkout, whatever kernels the user installed.
    spec = tmp_path / "kernels" / "nnkit-test"
    spec.mkdir(parents=True)
    kernel_env = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), **(env or {})}
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "nnkit test", "language": "python", "env": kernel_env}))
    manager = KernelManager(kernel_name="nnkit-test",
                            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)]))
    client = nbclient.NotebookClient(nb, km=manager, timeout=timeout,
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb


VIEW_NOTEBOOK = [
    """
    import asyncio, threading, time
    from test_model import mlp, toy_data
    from nnkit.training import LambdaCallback
    from nnkit.views.notebook import show

    x, y = toy_data(512)
    slow = LambdaCallback(on_batch_end=lambda batch, logs: time.sleep(0.005))
    run = mlp().fit(x, y, batch_size=16, epochs=1000, validation_data=(x[:64], y[:64]), verbose=0,
                    background=True, callbacks=[slow])
    view = show(run, interval=0.1)
    threads = set()
    refresh = view.refresh

    def spy():
        threads.add(threading.current_thread().name)
        return refresh()
    view.refresh = spy
    """,
    """
    for _ in range(300):  # wait for the state, not a fixed time: a loaded machine is slower
        if view.refresh_count >= 3 and view.status_text.startswith("training"):
            break
        await asyncio.sleep(0.05)
    """,
    """
    assert view.refresh_count >= 3, view.refresh_count
    assert view.status_text.startswith("training"), view.status_text
    before = view.refresh_count
    view.stop_button.click()  # what a click in the browser calls
    """,
    """
    await asyncio.sleep(1.0)
    for _ in range(100):  # a loaded machine may need longer; awaiting keeps the loop refreshing
        if view.stop_button.disabled:
            break
        await asyncio.sleep(0.1)
    """,
    """
    assert run.join(10) and run.status == "stopped", run.status
    assert view.refresh_count > before  # the kernel's loop refreshed it, not this cell
    assert threads == {"MainThread"}, threads
    assert view.status_text.startswith("stopped"), view.status_text
    assert view.message_text.startswith("stop: done at batch"), view.message_text
    assert view.stop_button.disabled
    assert bytes(view.plot.value).startswith(b"\\x89PNG") and len(view.plot_data["train cost"][0]) > 0
    print("view ok")
    """,
]


def test_the_view_refreshes_from_the_kernel_loop_in_an_executed_notebook(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(textwrap.dedent(src).strip())
                                         for src in VIEW_NOTEBOOK])
    execute(nb, tmp_path, cwd=tmp_path)
    shown = nb.cells[0].outputs
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in shown)
    assert nb.cells[-1].outputs[-1]["text"] == "view ok\n"


EXAMPLE = ROOT / "examples" / "interactive.ipynb"


def test_the_example_notebook_is_stored_valid_and_without_outputs():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(EXAMPLE, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)


def test_the_example_notebook_trains_on_mnist_changes_the_lr_and_stops(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    data = Path(os.environ.get("NNKIT_DATA") or DATA)
    if not (data / "mnist").is_dir():
        pytest.skip(f"no MNIST files under {data}")
    nb = nbformat.read(EXAMPLE, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(textwrap.dedent("""
        assert run.status == "stopped" and run.join(10)
        lrs = [e["lr"] for e in run.events("loss")]
        assert lrs[0] == 0.05 and lrs[-1] == 0.01, (lrs[0], lrs[-1])
        assert model.updater.lr_override == 0.01
        assert view.message_text.startswith("stop: done at batch"), view.message_text
        assert view.status_text.startswith("stopped"), view.status_text
        print("example ok")
    """).strip()))
    execute(nb, tmp_path, cwd=EXAMPLE.parent,
            env={"NNKIT_DATA": str(data), "NNKIT_NOTEBOOK_TRAIN_SIZE": "5000"})
    assert nb.cells[-1].outputs[-1]["text"] == "example ok\n"
