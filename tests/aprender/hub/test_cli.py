"""``python -m aprender.hub.server``: the command line, in a real subprocess and in-process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aprender.hub import HubServer, whoami
from aprender.hub import server as server_module


def test_subprocess_serves_with_users_and_faults(tmp_path: Path) -> None:
    args = [
        sys.executable,
        "-m",
        "aprender.hub.server",
        "--root",
        str(tmp_path / "data"),
        "--port",
        "0",
        "--token",
        "alice=tok-a",
        "--token",
        "bob=tok-b",
        "--max-file-size",
        "1000000",
        "--fault",
        "kind=error,method=GET,path=/api/whoami-v2,nth=1,times=1",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving on http://127.0.0.1:"), line
        url = line.split()[-1]
        assert whoami(token="tok-b", endpoint=url) == "bob"  # the injected 500 (in the log below) is retried
        assert (tmp_path / "data" / "repos").is_dir()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "GET /api/whoami-v2 500" in err and "tok-b" not in err
    assert "RuntimeWarning" not in err  # the package does not import the server module before runpy runs it


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--token", "alice"], "expected NAME=TOKEN"),
        (["--fault", "kind=nope"], "kind must be"),
        (["--token", "bad name=x"], "not a valid namespace"),
    ],
)
def test_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str) -> None:
    try:
        code = server_module.main(["--root", str(tmp_path), *argv])
    except SystemExit as exc:  # argparse refuses malformed options itself
        code = int(exc.code or 0)
    assert code == 2 and fragment in capsys.readouterr().err


def test_main_serves_until_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(self: HubServer) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(HubServer, "serve_forever", interrupted)
    assert server_module.main(["--root", str(tmp_path), "--token", "alice=t", "--fault", "kind=cut"]) == 0
    assert capsys.readouterr().out.startswith("serving on http://127.0.0.1:")


def test_package_exports_server_names_lazily() -> None:
    import aprender.hub

    assert aprender.hub.HubServer is HubServer and aprender.hub.Fault.__module__ == "aprender.hub.faults"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        aprender.hub.nope  # noqa: B018
