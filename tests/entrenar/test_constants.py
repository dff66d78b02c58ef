"""entrenar.constants stays import-light (no torch, no huggingface_hub), and so does the config schema built on it."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "huggingface_hub", "transformers", "safetensors", "tokenizers", "numpy")


def test_constants_and_the_config_load_nothing_heavy() -> None:
    code = f"import sys, entrenar.constants, entrenar.config\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
