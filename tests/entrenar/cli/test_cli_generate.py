"""``entrenar generate``: streamed text equals a plain `generate` run decoded at once; --chat; user errors.

Oracle for the text: `entrenar.generation.generate` on the same ids with the same options, decoded in
one call with ``skip_special_tokens=True`` (itself checked against transformers in tests/entrenar/generation);
for --chat prompts, transformers' ``apply_chat_template(add_generation_prompt=True)``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import click
import pytest
import torch

from aprender.hub import upload_folder
from aprender.text import Tokenizer
from entrenar.generation import default_eos_token_ids, generate
from entrenar.models import from_pretrained
from fixtures.cli import run_cli
from fixtures.threads import torch_threads

PROMPT = "The quick brown fox"


@pytest.fixture(autouse=True)
def _two_threads() -> Iterator[None]:
    with torch_threads(2):
        yield


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``entrenar generate ARGS`` in-process: (exit code, stdout, stderr)."""
    return run_cli(capsys, "generate", *args)


def _expected(folder: Path, ids: list[int], dtype: str = "float32", **options: Any) -> str:
    """What the command should print: one plain `generate` call, decoded at once, and a newline."""
    model, tokenizer = from_pretrained(folder, dtype=dtype), Tokenizer.from_dir(folder)
    (new,) = generate(model, [ids], eos_token_ids=default_eos_token_ids(model, tokenizer), **options)
    return tokenizer.decode(new, skip_special_tokens=True) + "\n"


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_streams_the_text_of_a_plain_greedy_run(
    family: str, tiny_checkpoints: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tiny_checkpoints[family]
    pieces: list[str] = []
    echo = click.echo

    def recording_echo(message: Any = None, **kwargs: Any) -> None:
        pieces.append(str(message))
        echo(message, **kwargs)

    monkeypatch.setattr(click, "echo", recording_echo)
    code, out, err = _run(["--model", str(folder), PROMPT, "--max-new-tokens", "24"], capsys)
    assert (code, err) == (0, "")
    ids = Tokenizer.from_dir(folder).encode(PROMPT)  # llama's tokenizer adds BOS, qwen2's does not
    assert out == _expected(folder, ids, max_new_tokens=24)
    assert len([piece for piece in pieces if piece]) > 5  # printed piece by piece, not at the end


def test_chat_applies_the_template_with_a_generation_prompt(
    tiny_checkpoints: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoTokenizer

    folder = tiny_checkpoints["qwen3"]
    reference = AutoTokenizer.from_pretrained(folder)
    for system in (None, "Answer in French."):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": "Hi"}]
        ids = cast(
            "list[int]",
            reference.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False),
        )
        assert Tokenizer.from_dir(folder).decode(ids).endswith("<|im_start|>assistant\n")
        extra = ["--system", system] if system else []
        code, out, _ = _run(["--model", str(folder), "Hi", "--chat", *extra, "--max-new-tokens", "16"], capsys)
        assert code == 0
        assert out == _expected(folder, ids, max_new_tokens=16)


def test_sampling_options_reach_generate(tiny_checkpoints: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    folder = tiny_checkpoints["mistral"]
    ids = Tokenizer.from_dir(folder).encode(PROMPT)
    flags = ["--temperature", "1.3", "--top-k", "40", "--top-p", "0.95", "--repetition-penalty", "1.2"]
    runs = [
        _run(["--model", str(folder), PROMPT, "--max-new-tokens", "20", *flags, "--seed", s], capsys) for s in "778"
    ]
    assert [code for code, _, _ in runs] == [0, 0, 0]
    assert runs[0][1] == runs[1][1] != runs[2][1]  # the seed makes sampling reproducible
    expected = _expected(
        folder,
        ids,
        max_new_tokens=20,
        do_sample=True,
        temperature=1.3,
        top_k=40,
        top_p=0.95,
        repetition_penalty=1.2,
        generator=torch.Generator().manual_seed(7),
    )
    assert runs[0][1] == expected


def test_stop_and_dtype(tiny_checkpoints: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    folder = tiny_checkpoints["qwen2"]
    tokenizer = Tokenizer.from_dir(folder)
    ids = tokenizer.encode(PROMPT)
    _, free, _ = _run(["--model", str(folder), PROMPT, "--max-new-tokens", "24"], capsys)
    stop = free[10:13]
    code, out, _ = _run(
        ["--model", str(folder), PROMPT, "--max-new-tokens", "24", "--stop", "@@", "--stop", stop], capsys
    )
    assert code == 0
    assert out == _expected(folder, ids, max_new_tokens=24, stop_strings=[stop], tokenizer=tokenizer)
    assert stop in out and len(out) < len(free)
    code, out, _ = _run(["--model", str(folder), PROMPT, "--max-new-tokens", "12", "--dtype", "bfloat16"], capsys)
    assert code == 0
    assert out == _expected(folder, ids, dtype="bfloat16", max_new_tokens=12)


def test_hub_repo_id_is_downloaded_with_its_tokenizer(
    tiny_checkpoints: dict[str, Path], local_hub: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tiny_checkpoints["qwen2"]
    upload_folder("alice/tiny-qwen2", folder, token=local_hub.tokens["alice"])
    code, out, _ = _run(["--model", "alice/tiny-qwen2", PROMPT, "--max-new-tokens", "10", "--chat"], capsys)
    assert code == 0  # stderr shows the download's progress bars; stdout only the text
    _, local, _ = _run(["--model", str(folder), PROMPT, "--max-new-tokens", "10", "--chat"], capsys)
    assert out == local


@pytest.fixture
def no_template(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of the tiny llama checkpoint whose tokenizer has no chat template."""
    folder = tmp_path / "plain"
    shutil.copytree(tiny_checkpoints["llama"], folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    del config["chat_template"]
    config_path.write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "{missing}", "hi"], "no such folder, and not a Hub repo id"),
        (["--model", "{file}", "hi"], "is a file; pass the model folder"),
        (["--model", "{plain}", "hi", "--chat"], "the tokenizer has no chat template; drop --chat"),
        (["--model", "{qwen2}", "hi", "--system", "be kind"], "--system applies only with --chat"),
        (["--model", "{qwen2}", "hi", "--top-k", "5"], "--top-k only applies when sampling"),
        (["--model", "{qwen2}", "hi", "--top-p", "0.5", "--seed", "1"], "--top-p, --seed only apply when sampling"),
        (["--model", "{qwen2}", "hi", "--temperature", "-1"], "--temperature -1.0 must be >= 0"),
        (["--model", "{qwen2}", "hi", "--temperature", "nan"], "--temperature nan must be >= 0"),
        (["--model", "{qwen2}", "hi", "--max-new-tokens", "0"], "max_new_tokens=0 must be a whole number >= 1"),
        (["--model", "{qwen2}", "hi", "--temperature", "1", "--top-p", "2"], "top_p=2.0 must be between 0 and 1"),
        (["--model", "{qwen2}", "", "--max-new-tokens", "3"], "PROMPT is empty; give the text to continue"),
        (["--model", "{qwen2}", "", "--chat"], "PROMPT is empty; give the text to continue"),
    ],
)
def test_user_errors_are_one_line_with_exit_2(
    args: list[str],
    message: str,
    tiny_checkpoints: dict[str, Path],
    no_template: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "weights.bin").write_bytes(b"")
    names = {
        "missing": str(tmp_path / "nope"),
        "file": str(tmp_path / "weights.bin"),
        "plain": str(no_template),
        "qwen2": str(tiny_checkpoints["qwen2"]),
    }
    code, out, err = _run([arg.format(**names) for arg in args], capsys)
    assert code == 2
    assert out == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err


def test_only_an_empty_prompt_is_refused(tiny_checkpoints: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    folder = tiny_checkpoints["llama"]  # its tokenizer adds BOS, so '' encodes to [BOS] and would generate
    code, out, err = _run(["--model", str(folder), "", "--max-new-tokens", "3"], capsys)
    assert (code, out) == (2, "")
    assert err == (
        "error: PROMPT is empty; give the text to continue, e.g. entrenar generate 'Once upon a time' --model MODEL\n"
    )
    code, out, err = _run(["--model", str(folder), " ", "--max-new-tokens", "3"], capsys)
    assert (code, err) == (0, "")
    assert out == _expected(folder, Tokenizer.from_dir(folder).encode(" "), max_new_tokens=3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_cuda_without_a_gpu_is_refused(tiny_checkpoints: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["--model", str(tiny_checkpoints["qwen2"]), "hi", "--device", "cuda"], capsys)
    assert code == 2
    assert err == "error: --device cuda: no CUDA GPU is available here; use --device cpu\n"


def test_help_lists_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["--help"], capsys)
    assert code == 0
    for flag in (
        "--model",
        "--chat",
        "--system",
        "--max-new-tokens",
        "--temperature",
        "--top-k",
        "--top-p",
        "--repetition-penalty",
        "--seed",
        "--stop",
        "--dtype",
        "--device",
    ):
        assert flag in out
