"""`entrenar monitor`: the dashboard driven headless with textual's pilot (its screen read back from the SVG
screenshot), against recorded and live run folders; the plain summary without a terminal; the CLI's errors."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from textual.pilot import Pilot

from entrenar.cli import monitor as monitor_cli
from entrenar.monitor.app import MonitorApp
from entrenar.monitor.screen import screen_text
from fixtures.cli import run_cli
from fixtures.run_folders import RunWriter, train_record

SIZE = (120, 40)
Scenario = Callable[[Pilot[None], MonitorApp], Awaitable[None]]


def drive(folder: Path, scenario: Scenario, poll_seconds: float = 0.1) -> MonitorApp:
    """Run the dashboard on `folder` headless while `scenario` presses keys and reads the screen."""
    app = MonitorApp(folder, poll_seconds=poll_seconds)

    async def main() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await scenario(pilot, app)

    asyncio.run(main())
    return app


def screen(app: MonitorApp) -> str:
    return screen_text(app.export_screenshot())


async def wait_for(pilot: Pilot[None], app: MonitorApp, *texts: str, timeout: float = 5.0) -> str:
    """The screen once it shows every one of `texts`; fails with the screen after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        await pilot.pause(0.05)
        shown = screen(app)
        if all(text in shown for text in texts):
            return shown
        if time.monotonic() > deadline:
            raise AssertionError(f"{texts} not on the screen after {timeout} s:\n{shown}")


def test_a_recorded_run_shows_step_loss_rate_eta_and_status(tmp_path: Path) -> None:
    RunWriter(tmp_path).steps(12)

    async def scenario(pilot: Pilot[None], app: MonitorApp) -> None:
        shown = await wait_for(pilot, app, "RUNNING")
        assert "step 12/100 (12%), epoch 0.24" in shown
        assert "loss       1.8000" in shown  # 3.0 - 0.1 * 12
        assert "loss parts ce 1.3000, kd 0.5000" in shown
        assert "tokens/s   1,500" in shown
        assert "tokens     3,072 / 25,600" in shown
        assert "ETA        0:00:15" in shown  # (25,600 - 3,072) tokens / 1,500 tokens/s = 15.0 s
        assert "RSS 1.2 GB (peak 1.5 GB)" in shown
        assert "last eval   step 10: loss 2.2000, perplexity 12.50," in shown  # the rest wraps
        assert "elapsed    0:01:0" in shown  # started 65 s before the writer, to the second
        assert "ALARM" not in shown
        assert "━ train" in shown and "━ eval" in shown

    drive(tmp_path, scenario)


def test_keys_switch_views_refresh_and_quit(tmp_path: Path) -> None:
    run = RunWriter(tmp_path).steps(12)

    async def scenario(pilot: Pilot[None], app: MonitorApp) -> None:
        await wait_for(pilot, app, "step 12/100")
        await pilot.press("2")
        shown = await wait_for(pilot, app, "recent samples, newest first", "answer  4 (10)")
        assert shown.index("answer  4 (10)") < shown.index("answer  4 (5)")
        assert "tokens/s   1,500" not in shown
        await pilot.press("1")
        await wait_for(pilot, app, "tokens/s   1,500")
        await pilot.press("tab")
        await wait_for(pilot, app, "recent samples")
        await pilot.press("tab")
        await wait_for(pilot, app, "tokens/s   1,500")
        run.step(13)  # the app polls once an hour here: only `r` shows the new step
        await pilot.press("r")
        await wait_for(pilot, app, "step 13/100")
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running

    drive(tmp_path, scenario, poll_seconds=3600)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process to stand for a training run and be SIGKILLed."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def test_a_sigkilled_run_shows_as_dead_within_a_second(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    RunWriter(tmp_path).steps(3).write_state(pid=sleeper.pid)

    async def scenario(pilot: Pilot[None], app: MonitorApp) -> None:
        await wait_for(pilot, app, "RUNNING")
        sleeper.kill()  # SIGKILL: the run cannot say goodbye, and its state still says running
        killed = time.monotonic()
        await wait_for(pilot, app, "DEAD", timeout=3.0)
        assert time.monotonic() - killed < 1.0

    drive(tmp_path, scenario)


def test_a_run_on_another_host_is_dead_once_its_heartbeat_stops(tmp_path: Path) -> None:
    run = RunWriter(tmp_path).steps(3)
    run.write_state(host="gpu-node-7", heartbeat_every=0.2)  # its pid means nothing here: only the heartbeat counts
    beating = threading.Event()
    beating.set()

    def heartbeat() -> None:
        while beating.is_set():
            run.write_state()
            time.sleep(0.2)

    thread = threading.Thread(target=heartbeat)
    thread.start()

    async def scenario(pilot: Pilot[None], app: MonitorApp) -> None:
        await wait_for(pilot, app, "RUNNING")
        await pilot.pause(1.0)
        assert "RUNNING" in screen(app)
        beating.clear()  # the machine is gone
        stopped = time.monotonic()
        await wait_for(pilot, app, "DEAD", timeout=3.0)
        assert time.monotonic() - stopped >= 0.8 - 0.2  # 4 heartbeats of 0.2 s, less the last beat's age

    try:
        drive(tmp_path, scenario)
    finally:
        beating.clear()
        thread.join()


def test_a_nan_loss_raises_the_alarm(tmp_path: Path) -> None:
    run = RunWriter(tmp_path).steps(4)
    run.append(train_record(5, loss=float("nan")))  # json writes NaN, as Python's json module does in the loop

    async def scenario(pilot: Pilot[None], app: MonitorApp) -> None:
        shown = await wait_for(pilot, app, "ALARM")
        assert "⚠ ALARM: step 5: non-finite loss (nan)" in shown
        assert "loss       nan" in shown

    drive(tmp_path, scenario)


def test_the_states_alarms_raise_the_alarm(tmp_path: Path) -> None:
    RunWriter(tmp_path).steps(4).write_state(alarms=[{"step": 3, "what": "non-finite gradient (inf)"}])

    async def scenario(pilot: Pilot[None], app: MonitorApp) -> None:
        await wait_for(pilot, app, "⚠ ALARM: step 3: non-finite gradient (inf)")

    drive(tmp_path, scenario)


@pytest.mark.parametrize(
    ("status", "error", "shown"),
    [("finished", None, "FINISHED"), ("interrupted", None, "INTERRUPTED"), ("failed", "CUDA out of memory", "FAILED")],
)
def test_an_ended_run_shows_how_it_ended(tmp_path: Path, status: str, error: str | None, shown: str) -> None:
    RunWriter(tmp_path).steps(4).write_state(status=status, error=error)

    async def scenario(pilot: Pilot[None], app: MonitorApp) -> None:
        text = await wait_for(pilot, app, f"● {shown}  step 4/100")
        assert "ETA        -" in text
        if error:
            assert f"step 4/100 (4%), epoch 0.08  {error}" in text

    drive(tmp_path, scenario)


def test_the_dashboard_follows_a_live_run(tmp_path: Path) -> None:
    run = RunWriter(tmp_path)
    run.write_state()
    started = threading.Event()

    def train() -> None:  # a fake `entrenar train`: a step every 0.3 s once the dashboard is up, then the end
        started.wait(timeout=30)
        for step in range(1, 11):
            run.step(step)
            time.sleep(0.3)
        run.write_state(status="finished")

    thread = threading.Thread(target=train)
    thread.start()

    async def scenario(pilot: Pilot[None], app: MonitorApp) -> None:
        await wait_for(pilot, app, "● RUNNING  step 0/100")
        started.set()
        seen: list[int] = []
        while "FINISHED" not in (shown := screen(app)) and len(seen) < 400:
            seen += [int(n) for n in re.findall(r"● RUNNING  step (\d+)/100", shown)]
            await pilot.pause(0.05)
        assert "● FINISHED  step 10/100" in shown
        assert seen == sorted(seen) and len(set(seen)) >= 4, seen  # it followed the steps as they came
        await pilot.press("2")
        await wait_for(pilot, app, "answer  4 (10)")

    try:
        drive(tmp_path, scenario)
    finally:
        started.set()
        thread.join()


def test_without_a_terminal_the_command_prints_a_plain_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    RunWriter(tmp_path).steps(12)
    code, out, err = run_cli(capsys, "monitor", str(tmp_path))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"entrenar monitor: {tmp_path}"
    assert lines[1].startswith("status:      running (heartbeat 0.")
    for line in (
        "step:        12/100 (12%), epoch 0.24",
        "loss:        1.8000",
        "lr:          2.00e-4",
        "tokens/s:    1,500",
        "ETA:         0:00:15",
        "last eval:   step 10: loss 2.2000, perplexity 12.50, token accuracy 42.1%",
        "alarms:      none",
        "model:       tiny-llama (lora)",
        "sample at step 10:",
        "  answer: 4 (10)",
    ):
        assert line in lines
    assert len(lines) <= 24  # one screen


def test_a_folder_from_before_run_state_is_summarised_with_status_unknown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    RunWriter(tmp_path).append(train_record(1), train_record(2))
    code, out, _ = run_cli(capsys, "monitor", str(tmp_path))
    assert code == 0
    assert "status:      unknown (no run_state.json)" in out
    assert "step:        2\n" in out


def test_on_a_terminal_the_command_opens_the_dashboard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    RunWriter(tmp_path).steps(1)
    opened: list[Path] = []
    monkeypatch.setattr(monitor_cli, "_is_terminal", lambda: True)
    monkeypatch.setattr(MonitorApp, "run", lambda self: opened.append(self.folder))
    assert run_cli(capsys, "monitor", str(tmp_path)) == (0, "", "")
    assert opened == [tmp_path]


def _read_terminal(leader: int) -> bytes:
    """What the program wrote to the terminal in the next 0.2 s (nothing once it closed the terminal)."""
    try:
        return os.read(leader, 1 << 16) if select.select([leader], [], [], 0.2)[0] else b""
    except OSError:  # EIO: the program exited
        return b""


def test_in_a_real_terminal_the_dashboard_shows_the_run_and_q_quits(tmp_path: Path) -> None:
    RunWriter(tmp_path).steps(12)
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 40 rows, 120 columns
    process = subprocess.Popen(
        [sys.executable, "-m", "entrenar.cli", "monitor", str(tmp_path)],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**os.environ, "TERM": "xterm-256color"},
        start_new_session=True,
    )
    os.close(follower)
    shown, deadline = b"", time.monotonic() + 20
    try:
        while not (b"RUNNING" in shown and b"12/100" in shown) and time.monotonic() < deadline:
            shown += _read_terminal(leader)
        assert b"RUNNING" in shown and b"12/100" in shown
        os.write(leader, b"q")
        while process.poll() is None and time.monotonic() < deadline:
            _read_terminal(leader)  # keep the terminal drained while the app restores it
        assert process.wait(timeout=1) == 0
    finally:
        process.kill()
        process.wait()
        os.close(leader)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda folder: folder / "nope", "nope: no such folder"),
        (lambda folder: folder / "file.txt", "file.txt: not a folder"),
        (lambda folder: folder, ": not a run's output folder (no run_state.json or metrics.jsonl)"),
    ],
)
def test_a_folder_without_a_run_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Callable[[Path], Path], message: str
) -> None:
    (tmp_path / "file.txt").write_text("x")
    code, out, err = run_cli(capsys, "monitor", str(make(tmp_path)))
    assert (code, out) == (2, "")
    assert err.startswith("error: ") and err.endswith(message + "\n") and err.count("\n") == 1


def test_the_monitor_loads_no_torch() -> None:
    # The monitor runs beside training, often on another machine: it must start at once, without torch.
    probe = (
        "import sys, entrenar.cli, entrenar.cli.monitor, entrenar.monitor.app\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
