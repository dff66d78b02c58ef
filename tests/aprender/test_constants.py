"""aprender.constants (and the reference resolver built on it) stay import-light: no torch, no huggingface_hub."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "huggingface_hub", "transformers", "safetensors", "tokenizers", "numpy")


def test_constants_and_classifying_a_local_path_load_nothing_heavy() -> None:
    code = (
        "import sys, aprender.constants, aprender.reference\n"
        "aprender.reference.classify_model_reference('.')\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
