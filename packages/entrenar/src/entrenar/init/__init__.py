"""`entrenar init`: inspect a base model and a dataset, then write a commented ``config.yaml`` that trains.

Typical use::

    plan = build_plan("Qwen/Qwen2.5-0.5B", "lora", "data/train.jsonl", "config.yaml")
    plan.base.num_parameters, plan.lora_rank, plan.data.seq_len
    write_config(plan, force=False)

Modules: `inspect` (config.json only: architecture and parameter count; the tokenizer), `rank` (LoRA
rank and alpha by model size), `propose` (token lengths and ``seq_len``), `plan` (every decision,
checked before writing, with the learning rate and warmup), `template` (the commented YAML).
"""

from entrenar.config.docs import key_docs
from entrenar.init.inspect import BaseModel, count_parameters, inspect_base, load_base_tokenizer
from entrenar.init.plan import (
    FULL_FINETUNE_LR,
    METHODS,
    WARMUP_STEPS,
    InitPlan,
    build_plan,
    config_path_value,
    warmup_steps_for,
)
from entrenar.init.propose import (
    SEQ_LEN_MULTIPLE,
    SEQ_LEN_PERCENTILE,
    DataSummary,
    analyse_data,
    estimate_steps,
    measure_token_lengths,
    nearest_rank_percentile,
    propose_seq_len,
)
from entrenar.init.rank import LARGE_MODEL_RANK, LORA_ALPHA, RANK_BY_SIZE, lora_rank_for
from entrenar.init.template import PUBLISH_REPO_PLACEHOLDER, check_output, render_config, write_config

__all__ = [
    "FULL_FINETUNE_LR",
    "LARGE_MODEL_RANK",
    "LORA_ALPHA",
    "METHODS",
    "PUBLISH_REPO_PLACEHOLDER",
    "RANK_BY_SIZE",
    "SEQ_LEN_MULTIPLE",
    "SEQ_LEN_PERCENTILE",
    "WARMUP_STEPS",
    "BaseModel",
    "DataSummary",
    "InitPlan",
    "analyse_data",
    "build_plan",
    "check_output",
    "config_path_value",
    "count_parameters",
    "estimate_steps",
    "inspect_base",
    "key_docs",
    "load_base_tokenizer",
    "lora_rank_for",
    "measure_token_lengths",
    "nearest_rank_percentile",
    "propose_seq_len",
    "render_config",
    "warmup_steps_for",
    "write_config",
]
