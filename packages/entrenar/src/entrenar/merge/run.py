"""`run_merge`: what ``entrenar merge CONFIG`` does, from a loaded config to a merged model folder.

1. With a ``publish:`` section, the repo id, token and write access are checked first (as training does).
2. The inputs are resolved (folders, ``.gguf`` files, Hub ids at their revisions; ``model+adapter`` folded
   into a copy) and must share one architecture (`entrenar.merge.inputs`).
3. Vocabularies: equal, or rebuilt from ``tokenizer_source`` (`entrenar.merge.vocab`).
4. The output tensors are planned (`entrenar.merge.plan`) and every planned tensor's shapes are checked
   from the checkpoint headers before anything is written.
5. Tensor by tensor, the method merges into a streaming writer, in a staging folder next to the output.
6. The folder gets the output ``config.json`` (layers and vocabulary of the merge, the output dtype),
   ``generation_config.json`` and the tokenizer (the base's, or the rebuilt one; ``chat_template`` set as
   asked), the resolved merge config (``merge_config.yaml``), ``final_model.json`` (``output: full``,
   ``techniques: [merge]``, the inputs with their revisions) and a model card. For every pruned input
   (`entrenar.prune.marks`) its zeros are counted in the merged model, and the log, the record
   (``sparsity_checks``) and the card say plainly whether the merge kept them.
7. With ``eval_data``, the merged model and each input are scored on that text
   (`entrenar.merge.evaluate`); a merged model far worse than every input is not kept unless
   ``keep_worse`` says so.
8. The staging folder replaces the output folder (which may hold an earlier merge, nothing else), and
   with ``publish:`` the result is published.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from aprender.atomic import atomic_write_json, atomic_write_text
from aprender.constants import CONFIG_NAME, GENERATION_CONFIG_NAME, TOKENIZER_FILES
from aprender.text import Tokenizer
from entrenar.constants import FINAL_MODEL_NAME
from entrenar.errors import MergeError
from entrenar.merge.config import MergeConfig, ModelRef
from entrenar.merge.evaluate import ModelScore, check_not_worse, score_model
from entrenar.merge.execute import InputReaders, check_shapes, run_plan
from entrenar.merge.inputs import MergeInput, check_architectures, resolve_inputs
from entrenar.merge.methods import get_method
from entrenar.merge.params import group_inputs, resolve_parameters
from entrenar.merge.plan import PlannedTensor, SliceSpec, plan_tensors
from entrenar.merge.vocab import MergedVocabulary, align_rows, build_vocabulary, check_vocabularies

__all__ = ["MERGE_CONFIG_NAME", "MergeResult", "run_merge"]

MERGE_CONFIG_NAME = "merge_config.yaml"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class MergeResult:
    """What a merge did.

    Attributes:
        output_dir: The merged model's folder (None for a dry run).
        tensors: Output tensors planned (and written).
        layers: Output decoder layers.
        scores: Perplexities on ``eval_data`` (the merged model last), empty without it.
        url: The published repo's URL, with ``publish:``.
    """

    output_dir: Path | None
    tensors: int
    layers: int
    scores: tuple[ModelScore, ...] = ()
    url: str | None = None


def run_merge(
    config: MergeConfig,
    out_dir: str | Path,
    *,
    dry_run: bool = False,
    keep_worse: bool = False,
    log: Callable[[str], None] = print,
) -> MergeResult:
    """Merge as the config says (module docstring).

    Args:
        config: The loaded merge config (`entrenar.merge.config.load_merge_config`).
        out_dir: The output folder: absent, empty, or an earlier merge's output (replaced).
        dry_run: Check everything and print the plan; write nothing.
        keep_worse: Keep a merged model far worse than its inputs (or the config's ``keep_worse``).
        log: Where progress lines go.

    Returns:
        The `MergeResult`.

    Raises:
        MergeError: Inputs that cannot merge, or a merged model far worse than its inputs.
        AprenderError: Unresolvable references, Hub access, bad checkpoints.
    """
    out = Path(out_dir).absolute()
    _check_output_dir(out)
    method = get_method(config.merge_method)
    if config.publish is not None and not dry_run:
        from entrenar.publish import preflight  # the Hub client only when publishing

        preflight(config.publish.repo, private=config.publish.private, endpoint=config.publish.endpoint)
    models = config.referenced_models()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-merge-", dir=out.parent) as work:
        inputs = resolve_inputs([(ref.reference, ref.revision, ref.adapter) for ref in models], Path(work))
        check_architectures(inputs)
        names = [item.name for item in inputs]
        vocab = _vocabulary(config, models, inputs)
        slices, base_of = _slices(config, models, inputs)
        with InputReaders([item.folder for item in inputs]) as readers:
            tensor_names = {index: readers.reader(index).keys() for index in range(len(inputs))}
            plan, layers = plan_tensors(
                slices, tensor_names, {i: item.config.num_layers for i, item in enumerate(inputs)}
            )
            check_shapes(plan, readers, names, vocab_merge=vocab is not None)
            log(f"{method.title} merge of {len(inputs)} models: {len(plan)} tensors, {layers} layers")
            if dry_run:
                return MergeResult(None, len(plan), layers)
            staging = Path(work) / "out"
            dtype = _out_dtype(config, inputs)
            run_plan(
                plan,
                readers,
                method,
                _resolver(config, method, models),
                base_of=base_of,
                out_dir=staging,
                out_dtype=dtype,
                seed=config.seed if config.seed is not None else 0,
                align_rows=None if vocab is None else _aligner(vocab),
                progress=_progress(log),
            )
        output_source = inputs[_output_source(config, models)]
        _write_model_files(staging, config, output_source, inputs, vocab, _layer_sources(slices), dtype)
        checks = _sparsity_checks(inputs, staging, log)
        scores = _scores(config, inputs, staging, keep_worse, log)
        _write_record(staging, config, method.name, method.title, method.reference, inputs, models, scores, checks)
        _write_card(staging, out.name)
        _replace(out, staging)
    log(f"merged model written to {out}")
    url = None
    if config.publish is not None:
        from entrenar.publish import publish_output

        url = publish_output(out, config.publish).url
        log(f"published to {url}")
    return MergeResult(out, len(plan), layers, tuple(scores), url)


# -------------------------------------------------------------------------------------------- inputs


def _check_output_dir(out: Path) -> None:
    """Refuse an output folder holding anything but an earlier merge's output (never clobber other files)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise MergeError(f"{out}: exists and is not a folder; choose another output folder with -o")
    if any(out.iterdir()) and "merge" not in _techniques(out):
        raise MergeError(f"{out}: is not empty and holds no earlier merge; choose an empty or new folder with -o")


def _techniques(folder: Path) -> list[str]:
    try:
        record = json.loads((folder / FINAL_MODEL_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    techniques = record.get("techniques") if isinstance(record, dict) else None
    return techniques if isinstance(techniques, list) else []


def _slices(
    config: MergeConfig, models: tuple[ModelRef, ...], inputs: list[MergeInput]
) -> tuple[list[SliceSpec], Callable[[PlannedTensor], int | None]]:
    """The plan's slices in input indices, and each planned tensor's base input index."""
    slices, bases = [], []
    count = 1 if config.models is not None else len(config.slices or ())
    for slice_index in range(count):
        refs, base = group_inputs(config, slice_index)
        if config.models is not None:
            ranges = [(0, inputs[models.index(ref)].config.num_layers) for ref in refs]
        else:
            assert config.slices is not None
            ranges = [source.layer_range for source in config.slices[slice_index].sources]
        slices.append(
            SliceSpec(tuple((models.index(ref), start, end) for ref, (start, end) in zip(refs, ranges, strict=True)))
        )
        bases.append(None if base is None else models.index(refs[base]))
    return slices, lambda planned: bases[planned.slice_index]


def _resolver(config: MergeConfig, method: Any, models: tuple[ModelRef, ...]) -> Callable[[PlannedTensor], Any]:
    def resolve(planned: PlannedTensor) -> Any:
        _, base = group_inputs(config, planned.slice_index if config.slices is not None else None)
        return resolve_parameters(
            config,
            method,
            tensor_name=planned.name,
            t=planned.t,
            sources=[models[index] for index, _ in planned.sources],
            slice_index=planned.slice_index if config.slices is not None else None,
            base_index=base,
            input_names=[name for _, name in planned.sources],
        )

    return resolve


def _output_source(config: MergeConfig, models: tuple[ModelRef, ...]) -> int:
    """The input whose config and generation config the output starts from: the base, else the first."""
    return models.index(config.base_model) if config.base_model is not None else 0


def _out_dtype(config: MergeConfig, inputs: list[MergeInput]) -> torch.dtype:
    name = config.out_dtype or config.dtype or inputs[0].config.torch_dtype or "float32"
    return _DTYPES[name]


# ------------------------------------------------------------------------------------------ vocabulary


def _vocabulary(config: MergeConfig, models: tuple[ModelRef, ...], inputs: list[MergeInput]) -> MergedVocabulary | None:
    """The rebuilt vocabulary with ``tokenizer_source``; None when every input keeps its rows as they are."""
    source = config.tokenizer_source
    names = [item.name for item in inputs]
    check_vocabularies([item.config.vocab_size for item in inputs], names, None if source is None else str(source))
    if source is None:
        return None
    base = models.index(config.base_model) if config.base_model is not None else None
    if isinstance(source, ModelRef):
        if source not in models:
            raise MergeError(f"tokenizer_source {source} is not one of the merged models; name one of them")
        chosen: Any = models.index(source)
    else:
        chosen = source
    return build_vocabulary([item.folder for item in inputs], names, base, chosen)


def _aligner(vocab: MergedVocabulary) -> Callable[[list[torch.Tensor], list[int], int | None], list[torch.Tensor]]:
    def align(tensors: list[torch.Tensor], indices: list[int], base: int | None) -> list[torch.Tensor]:
        subset = replace(
            vocab,
            permutations=tuple(vocab.permutations[i] for i in indices),
            names=tuple(vocab.names[i] for i in indices),
        )
        return align_rows(tensors, subset, base)

    return align


# -------------------------------------------------------------------------------------------- outputs


def _progress(log: Callable[[str], None]) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        if done == total or done % max(total // 10, 1) == 0:
            log(f"merged {done}/{total} tensors")

    return report


def _write_model_files(
    out: Path,
    config: MergeConfig,
    source: MergeInput,
    inputs: list[MergeInput],
    vocab: MergedVocabulary | None,
    layer_sources: list[tuple[int, int]],
    dtype: torch.dtype,
) -> None:
    """config.json (layers, vocabulary, dtype of the merge), generation_config.json and the tokenizer."""
    raw = _raw_config(source.folder)
    raw["num_hidden_layers"] = len(layer_sources)
    if "layer_types" in raw:  # each output layer keeps the attention type of the layer it was made from
        raw["layer_types"] = [_raw_config(inputs[i].folder)["layer_types"][layer] for i, layer in layer_sources]
    raw["torch_dtype"] = str(dtype).removeprefix("torch.")
    if vocab is not None:
        raw["vocab_size"] = vocab.size
    atomic_write_json(out / CONFIG_NAME, raw)
    if (source.folder / GENERATION_CONFIG_NAME).is_file():
        shutil.copyfile(source.folder / GENERATION_CONFIG_NAME, out / GENERATION_CONFIG_NAME)
    tokenizer = vocab.tokenizer if vocab is not None else Tokenizer.from_dir(source.folder)
    if config.chat_template is not None:
        tokenizer.chat_template = _chat_template(config.chat_template, inputs, source)
    if vocab is None and config.chat_template is None:
        for name in TOKENIZER_FILES:
            if (source.folder / name).is_file():
                shutil.copyfile(source.folder / name, out / name)
    else:
        tokenizer.save(out)
    atomic_write_text(out / MERGE_CONFIG_NAME, config.to_yaml() + "\n")


def _raw_config(folder: Path) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    return raw


def _layer_sources(slices: list[SliceSpec]) -> list[tuple[int, int]]:
    """(input index, layer) each output layer is made from: its slice's first source's."""
    return [
        (index, start + offset)
        for spec in slices
        for index, start, _ in spec.sources[:1]
        for offset in range(spec.num_layers)
    ]


def _chat_template(choice: str, inputs: list[MergeInput], source: MergeInput) -> str:
    """Jinja text as given; ``auto``: the template most inputs have (the output source's on a tie)."""
    if choice != "auto":
        if "{" not in choice:
            raise MergeError(
                f"chat_template {choice!r}: named templates are not built in; give the Jinja text, or auto"
            )
        return choice
    templates = [Tokenizer.from_dir(item.folder).chat_template for item in inputs]
    texts = [template for template in templates if isinstance(template, str)]
    if not texts:
        raise MergeError("chat_template auto: no input has a chat template; give the Jinja text")
    counts = Counter(texts)
    own = Tokenizer.from_dir(source.folder).chat_template
    best = max(counts.values())
    return own if isinstance(own, str) and counts[own] == best else counts.most_common(1)[0][0]


def _scores(
    config: MergeConfig, inputs: list[MergeInput], merged: Path, keep_worse: bool, log: Callable[[str], None]
) -> list[ModelScore]:
    if config.eval_data is None:
        return []
    scores = [score_model(item.name, item.folder, config.eval_data) for item in inputs]
    merged_score = score_model("merged", merged, config.eval_data)
    for score in [*scores, merged_score]:
        log(f"perplexity of {score.name} on {config.eval_data}: {score.perplexity:.4g} ({score.tokens} tokens)")
    if not (keep_worse or config.keep_worse):
        check_not_worse(merged_score, scores)
    return [*scores, merged_score]


def _sparsity_checks(inputs: list[MergeInput], merged: Path, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """For each pruned input (`entrenar.prune.marks`): are its zeros still zero in the merged model? Said plainly."""
    from entrenar.prune.marks import check_folder, read_mark

    checks = []
    for item in inputs:
        mark = read_mark(item.folder)
        if mark is not None:
            check = check_folder(replace(mark, source=item.name), "the merged model", merged)
            log(check.line())
            checks.append(check.record())
    return checks


def _write_record(
    out: Path,
    config: MergeConfig,
    method: str,
    title: str,
    reference: str,
    inputs: list[MergeInput],
    models: tuple[ModelRef, ...],
    scores: list[ModelScore],
    checks: list[dict[str, Any]],
) -> None:
    """``final_model.json``: a full model made by merging, its inputs with their revisions, the scores, and whether
    pruned inputs' zeros were kept (``sparsity_checks``)."""
    from entrenar.train.outputs import package_versions

    base = None
    if config.base_model is not None:
        item = inputs[models.index(config.base_model)]
        kind = "local" if Path(config.base_model.reference).is_absolute() else "hub"
        base = {
            "path": config.base_model.reference,
            "source": kind,
            "revision": item.revision,
            "resolved_revision": item.resolved_revision,
        }
    record = {
        "base_model": base,
        "output": "full",
        "techniques": ["merge"],
        "merge": {
            "method": method,
            "title": title,
            "reference": reference,
            "inputs": [
                {"model": item.name, "revision": item.revision, "resolved_revision": item.resolved_revision}
                for item in inputs
            ],
            "perplexity": [
                {"model": s.name, "perplexity": s.perplexity, "loss": s.loss, "tokens": s.tokens} for s in scores
            ],
            "config": config.to_yaml(),
        },
        **({"sparsity_checks": checks} if checks else {}),
        "packages": package_versions(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_json(out / FINAL_MODEL_NAME, record)


def _write_card(out: Path, name: str) -> None:
    """README.md from the record, as `entrenar publish` writes it."""
    from entrenar.publish.card import CardContext, write_model_card
    from entrenar.publish.detect import detect_model_folder

    folder = detect_model_folder(out)
    base = folder.base_model if folder.base_model and not Path(folder.base_model).is_absolute() else None
    ctx = CardContext(repo_id=name, layout="model", techniques=folder.techniques, base_model=base, record=folder.record)
    write_model_card(out, ctx, None)


def _replace(out: Path, staging: Path) -> None:
    """Move the staging folder to `out`, replacing an earlier merge's output only once the new one is whole."""
    if out.exists():
        old = out.with_name(f".{out.name}-old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out)
