"""`.gitignore` matching, checked against `git check-ignore --no-index` (the oracle)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from aprender.hub.gitignore import is_ignored

GITIGNORE = """\
# comment, then a blank line

*.log
!keep.log
build/
/top.txt
docs/**/*.md
a?c
[ab]x
[!q]y.tmp
**/cache/**
out/*.bin
"""
PATHS = [
    "x.log",
    "d/x.log",
    "keep.log",
    "d/keep.log",
    "build/a/b",
    "xbuild/a",
    "build",
    "top.txt",
    "d/top.txt",
    "docs/a/b/c.md",
    "docs/c.md",
    "docs/c.txt",
    "abc",
    "a/b/c",
    "ax",
    "bx",
    "cx",
    "zy.tmp",
    "qy.tmp",
    "a/cache/b/c",
    "cache/x",
    "out/w.bin",
    "out/sub/w.bin",
    "README.md",
]


def _git_ignored(tmp_path: Path, gitignore: str, paths: list[str]) -> set[str]:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text(gitignore)
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin"],
        cwd=tmp_path,
        input="\n".join(paths) + "\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    return set(result.stdout.split())


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git as the oracle")
def test_matches_git_check_ignore(tmp_path: Path) -> None:
    expected = _git_ignored(tmp_path, GITIGNORE, PATHS)
    assert {p for p in PATHS if is_ignored(p, GITIGNORE)} == expected
    assert {"x.log", "build/a/b", "docs/c.md", "cache/x"} <= expected and "keep.log" not in expected


def test_hand_computed_cases() -> None:
    # Last match wins: "*.log" ignores, "!keep.log" re-includes.
    assert is_ignored("a.log", "*.log\n!keep.log") and not is_ignored("keep.log", "*.log\n!keep.log")
    # Anchored pattern only at the root; directory-only pattern never matches a file of that name.
    assert is_ignored("top.txt", "/top.txt") and not is_ignored("sub/top.txt", "/top.txt")
    assert not is_ignored("build", "build/") and is_ignored("build/x", "build/")
    assert not is_ignored("anything", "")
