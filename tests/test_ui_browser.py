"""The web dashboard in a real headless browser (Debian's chromium and chromium-driver through
Selenium) against a real server and a real training run (``nnkit train`` on a small MNIST job,
recorded in a real store): the experiments page lists it, its page shows the loss figure
growing, Pause and Set reach the run and show its answers, and user text stays text.

Without the browser the tests skip, except under CI (``CI`` set), where they fail: .ci/run
installs it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import DATA, ROOT, wait_until
from helpers import run_events as events

pytest.importorskip("starlette")
from nnkit.ui.server import ThreadedServer, create_app  # noqa: E402

from test_cli import SMALL_JOB  # noqa: E402

CHROMEDRIVER = "/usr/bin/chromedriver"
XSS = "<script>alert(1)</script>"
needs_mnist = pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"no datasets in {DATA}")

# test_cli's small MNIST job, slower to learn and long enough to watch: steps given per test.
LONG_JOB = (SMALL_JOB.replace("lr: 0.1 ", "lr: 0.05 ")
            .replace("run {{ steps: 20 display_freq: 5 test_freq: 10 checkpoint_freq: 10 ",
                     "run {{ steps: {steps} display_freq: 20 test_freq: 200 checkpoint_freq: 0 "))


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (it is in the test extra)"
    if not Path(CHROMEDRIVER).exists() or not shutil.which("chromium"):
        return "no chromium and chromium-driver (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture(scope="module")
def browser():
    why = browser_missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"{why}: CI must run the browser tests (.ci/run installs them)")
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1100", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    # The driver is given explicitly: Selenium Manager never tries to download one.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait(driver, condition, timeout: float = 60, message: str = ""):
    """``condition(driver)``'s first true value, polled; the pages redraw as the run goes on,
    so an element found a moment ago may be gone (stale): look again."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=[StaleElementReferenceException]).until(condition, message)


def click(driver, css: str) -> None:
    """Clicks the element ``css`` names, looking it up again if it was redrawn meanwhile."""
    from selenium.webdriver.common.by import By
    wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, css).click() or True, message=f"cannot click {css}")


def train(tmp_path: Path, name: str, steps: int, store: Path) -> tuple[subprocess.Popen, Path]:
    """``nnkit train`` of a small MNIST job of ``steps`` batches, named ``name`` in ``store``."""
    job = tmp_path / f"job{len(list(tmp_path.glob('job*.conf')))}.conf"
    job.write_text(LONG_JOB.format(data=DATA, runs=tmp_path / "runs", steps=steps))
    run_dir = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "nnkit.cli", "train", str(job), "--run-dir",
                             str(run_dir), "--store", str(store), "--name", name], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return proc, run_dir


@needs_mnist
def test_watch_and_steer_a_live_run_in_the_browser(browser, tmp_path):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    from nnkit.experiments import Store
    path = tmp_path / "experiments.db"
    # A finished run named like a script, then the live one.
    done, _ = train(tmp_path, XSS, 20, path)
    assert done.wait(300) == 0, done.stderr.read()
    live, run_dir = train(tmp_path, "mnist-live", 1_000_000, path)
    store = Store(path)
    try:
        wait_until(lambda: any(r.run_dir and Path(r.run_dir) == run_dir.resolve()
                               for r in store.runs()), timeout=120)
        record = next(r for r in store.runs() if Path(r.run_dir or "/") == run_dir.resolve())
        store.tag(record.id, "<b>bold</b>")
        with ThreadedServer(create_app(store)) as server:
            browser.get(server.url)
            row = f'tr[data-run="{record.id}"]'
            wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, row), message="the live run is not listed")
            # Shown as text, not run: the name of the other run, the tag of this one.
            wait(browser, lambda d: XSS in [a.text for a in d.find_elements(By.CSS_SELECTOR, "td.name a")])
            wait(browser, lambda d: "<b>bold</b>" in [t.text for t in d.find_elements(By.CSS_SELECTOR, f"{row} .tag")])
            with pytest.raises(NoAlertPresentException):
                browser.switch_to.alert.text  # noqa: B018
            click(browser, f"{row} td.name a")

            def loss_points(d):
                return int(d.find_element(By.CSS_SELECTOR, '[data-figure="loss"] .chart').get_attribute("data-points") or 0)
            wait(browser, lambda d: loss_points(d) > 0, message="no loss points drawn")
            first = loss_points(browser)
            wait(browser, lambda d: loss_points(d) > first + 5, message="the loss figure does not grow")

            click(browser, 'button[data-command="pause"]')
            wait(browser, lambda d: d.find_element(By.ID, "status").get_attribute("data-state") == "paused",
                 message="the status does not become paused")
            answer = wait(browser, lambda d: next((li for li in d.find_elements(By.CSS_SELECTOR, "#answers li.ok")
                                                   if "pause acknowledged at step" in li.text), False))
            assert answer.get_attribute("data-command") == "pause"

            browser.find_element(By.CSS_SELECTOR, '#set-form input[name="lr"]').send_keys("0.0123")
            click(browser, "#set-button")
            answer = wait(browser, lambda d: next((li for li in d.find_elements(By.CSS_SELECTOR, "#answers li.ok")
                                                   if "set acknowledged" in li.text), False))
            assert '"lr": 0.0123' in answer.text
            acks = [e for e in events(run_dir) if e["type"] == "ack" and e["command"] == "set"]
            assert [a["values"] for a in acks] == [{"lr": 0.0123}]

            browser.find_element(By.CSS_SELECTOR, '#set-form input[name="lr"]').clear()
            browser.find_element(By.CSS_SELECTOR, '#set-form input[name="momentum"]').send_keys("1.5")
            click(browser, "#set-button")
            refused = wait(browser, lambda d: next((li for li in d.find_elements(By.CSS_SELECTOR, "#answers li.error")
                                                    if "refused" in li.text), False))
            assert refused.text == "set refused: set momentum: must be in [0, 1), got 1.5"

            path = browser.find_element(By.CSS_SELECTOR, '#load-form input[name="path"]')
            path.send_keys(str(tmp_path / "elsewhere.h5"))
            click(browser, "#load-button")
            refused = wait(browser, lambda d: next((li for li in d.find_elements(By.CSS_SELECTOR, "#answers li.error")
                                                    if "load_weights refused" in li.text), False))
            assert "is outside the allowed roots" in refused.text
            click(browser, 'button[data-command="checkpoint"]')  # then the run loads the one it wrote (its latest)
            wait(browser, lambda d: any("checkpoint acknowledged" in li.text
                                        for li in d.find_elements(By.CSS_SELECTOR, "#answers li.ok")))
            path.clear()
            path.send_keys(str(run_dir))  # a run directory: its latest checkpoint
            click(browser, "#load-button")
            loaded = wait(browser, lambda d: next((li for li in d.find_elements(By.CSS_SELECTOR, "#answers li.ok")
                                                   if "load_weights acknowledged" in li.text), False))
            assert f'path="{run_dir.resolve()}/checkpoint-' in loaded.text

            click(browser, 'button[data-command="resume"]')
            wait(browser, lambda d: d.find_element(By.ID, "status").get_attribute("data-state") == "running")
            resumed = loss_points(browser)
            wait(browser, lambda d: loss_points(d) > resumed, message="the run does not go on")
            shot = tmp_path / "experiment-page.png"
            assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
            # README's picture: NNKIT_UI_SCREENSHOT=docs/experiment-page.png pytest tests/test_ui_browser.py
            if os.environ.get("NNKIT_UI_SCREENSHOT"):
                shutil.copy(shot, os.environ["NNKIT_UI_SCREENSHOT"])

            click(browser, 'button[data-command="stop"]')
            wait(browser, lambda d: any("stop acknowledged" in li.text
                                        for li in d.find_elements(By.CSS_SELECTOR, "#answers li.ok")))
            assert live.wait(120) == 0
            wait(browser, lambda d: d.find_element(By.ID, "status").get_attribute("data-state") == "stopped")
            browser.get("about:blank")  # closes the page's stream before the server stops
    finally:
        if live.poll() is None:
            live.kill()
            live.wait(30)


SWEEP_LRS = (0.2, 0.1, 0.05, 0.02)  # the last one stays queued: the worker runs three


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory):
    """A store with a real small sweep: test_cli's SMALL_JOB swept over updater.lr (``nnkit sweep
    --grid``: a run queued per point, the point its ``--set`` override), then queued once more
    outside the sweep (``nnkit queue``); a real ``nnkit worker`` runs the first three. Returns
    the store, the sweep and the five run ids."""
    from nnkit.experiments import Store
    tmp = tmp_path_factory.mktemp("sweep")
    (tmp / "job.conf").write_text(SMALL_JOB.format(data=DATA, runs=tmp / "runs"))
    store = Store(tmp / "experiments.db")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def nnkit(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "nnkit.cli", *args, "--store", "experiments.db"], cwd=tmp,
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        return done.stdout
    out = nnkit("sweep", "job.conf", "--grid", "updater.lr=" + ",".join(map(str, SWEEP_LRS)), "--name", "lr-grid").split()
    sweep, ids = out[0], out[1::2]
    assert out[2::2] == [f"updater.lr={lr}" for lr in SWEEP_LRS]
    ids.append(nnkit("queue", "job.conf", "--name", "later", "--retries", "2").strip())
    nnkit("worker", "--runs-dir", "runs", "--once", "--max-jobs", "3")
    assert [store.get(i).status for i in ids] == ["finished"] * 3 + ["queued"] * 2
    return store, sweep, ids


@needs_mnist
def test_a_sweep_page_shows_each_run_s_point_and_curve_and_cancels_a_queued_run(browser, sweep_store, tmp_path):
    from selenium.webdriver.common.by import By
    store, sweep, all_ids = sweep_store
    ids, later = all_ids[:4], all_ids[4]
    with ThreadedServer(create_app(store)) as server:
        # The list: each queued run's place in the queue; a run of the sweep names it.
        browser.get(server.url)
        wait(browser, lambda d: [d.find_element(By.CSS_SELECTOR, f'tr[data-run="{i}"] td.queue').get_attribute("data-position")
                                 for i in (ids[3], later)] == ["1", "2"], message="the queue positions are not shown")
        assert "sweep lr-grid at updater.lr=0.02" in browser.find_element(By.CSS_SELECTOR, f'tr[data-run="{ids[3]}"] .sweep-of').text
        # A queued run's page: its job, its place, and Cancel (dequeue) instead of the controls.
        browser.get(server.url + f"run/{later}")
        wait(browser, lambda d: d.find_element(By.ID, "queue-text").text.startswith("#2 in the queue: no worker has taken it yet"))
        assert browser.find_element(By.ID, "config").text.startswith("# nnkit") and \
            'name: "small"' in browser.find_element(By.ID, "config").text
        assert not browser.find_element(By.ID, "controls").is_displayed()
        click(browser, "#cancel")
        wait(browser, lambda d: any(li.text == f"run {later} was queued: cancelled (status stopped)"
                                    for li in d.find_elements(By.CSS_SELECTOR, "#answers li.ok")))
        wait(browser, lambda d: d.find_element(By.ID, "status").get_attribute("data-state") == "stopped")
        assert store.get(later).status == "stopped" and not browser.find_element(By.ID, "queue-box").is_displayed()

        browser.get(server.url + "sweeps")
        wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, f'tr[data-sweep="{sweep}"] td.name a').text == "lr-grid")
        click(browser, f'tr[data-sweep="{sweep}"] td.name a')
        wait(browser, lambda d: d.find_element(By.ID, "sweep-name").text == "lr-grid")

        def rows(d):
            return {r.get_attribute("data-run"): r for r in d.find_elements(By.CSS_SELECTOR, "#sweep-runs tbody tr")}
        wait(browser, lambda d: set(rows(d)) == set(ids), message="not every run of the sweep is listed")
        for run_id, lr in zip(ids, SWEEP_LRS):
            row = rows(browser)[run_id]
            assert row.find_element(By.CSS_SELECTOR, 'td.point[data-key="updater.lr"]').text == str(lr)
            best = row.find_element(By.CSS_SELECTOR, 'td.best[data-metric="test_error"]').text
            wanted = store.best(run_id).get("test_error")
            assert (wanted is None) == (run_id == ids[3])  # the queued one has not run
            assert best == ("–" if wanted is None else f"{float(f'{wanted:.4g}'):g}")  # 4 significant digits
        # One curve per run that trained, each named by its point in the legend.
        for figure in ("train cost", "test error"):
            css = f'[data-figure="{figure}"]'
            wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, css).get_attribute("data-runs") == "3",
                 message=f"the {figure} figure does not draw the three runs")
            legend = [k.text for k in browser.find_elements(By.CSS_SELECTOR, f"{css} .legend .key")]
            assert legend == [f"updater.lr={lr}" for lr in SWEEP_LRS[:3]]
            assert len(browser.find_elements(By.CSS_SELECTOR, f"{css} svg path")) == 3
        # Sorting by the point: the largest learning rate last when ascending, first when descending.
        click(browser, 'th[data-sort="point:updater.lr"]')
        wait(browser, lambda d: [r.get_attribute("data-run") for r in d.find_elements(By.CSS_SELECTOR, "#sweep-runs tbody tr")]
             == ids[::-1])
        click(browser, 'th[data-sort="point:updater.lr"]')
        wait(browser, lambda d: [r.get_attribute("data-run") for r in d.find_elements(By.CSS_SELECTOR, "#sweep-runs tbody tr")]
             == ids)
        shot = tmp_path / "sweep-page.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        # README's picture: NNKIT_UI_SWEEP_SCREENSHOT=docs/sweep-page.png pytest tests/test_ui_browser.py
        if os.environ.get("NNKIT_UI_SWEEP_SCREENSHOT"):
            shutil.copy(shot, os.environ["NNKIT_UI_SWEEP_SCREENSHOT"])

        # The status filter: the queued run alone, then all again.
        from selenium.webdriver.support.ui import Select
        status = Select(browser.find_element(By.CSS_SELECTOR, 'select[name="status"]'))
        status.select_by_value("queued")
        wait(browser, lambda d: list(rows(d)) == [ids[3]])
        status.select_by_value("")
        wait(browser, lambda d: set(rows(d)) == set(ids))
        # Cancel the queued run from the page: it is dequeued in the store, and no worker takes it.
        queued = ids[3]
        assert [b.get_attribute("data-run") for b in browser.find_elements(By.CSS_SELECTOR, "button.cancel")] == [queued]
        click(browser, f'button.cancel[data-run="{queued}"]')
        wait(browser, lambda d: any(li.text == f"run {queued} was queued: cancelled (status stopped)"
                                    for li in d.find_elements(By.CSS_SELECTOR, "#answers li.ok")))
        assert store.get(queued).status == "stopped"
        wait(browser, lambda d: rows(d)[queued].get_attribute("data-status") == "stopped")
        assert not browser.find_elements(By.CSS_SELECTOR, "button.cancel")
        wait(browser, lambda d: d.find_element(By.ID, "status").get_attribute("data-state") == "finished",
             message="the sweep does not read as finished once none of its runs is live")
        browser.get("about:blank")
