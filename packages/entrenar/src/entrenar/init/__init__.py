"""`entrenar init`: inspect a base model and a dataset, then write a commented ``config.yaml`` that trains.

Typical use::

    plan = build_plan("Qwen/Qwen2.5-0.5B", "lora", "data/train.jsonl", "config.yaml")
    plan.base.num_parameters, plan.lora_rank, plan.data.seq_len
    write_config(plan, force=False)

Modules: `inspect` (config.json only: architecture and parameter count; the tokenizer), `rank` (LoRA
rank and alpha by model size), `propose` (token lengths and ``seq_len``), `plan` (every decision,
checked before writing), `template` (the commented YAML).
"""

from entrenar.config.docs import key_docs
from entrenar.init.inspect import BaseModel, count_parameters, inspect_base, load_base_tokenizer
from entrenar.init.plan import FULL_FINETUNE_LR, METHODS, InitPlan, build_plan, config_path_value
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
from entrenar.init.rank import ALPHA_PER_RANK, LARGE_MODEL_RANK, RANK_BY_SIZE, lora_alpha_for, lora_rank_for
from entrenar.init.template import PUBLISH_REPO_PLACEHOLDER, check_output, render_config, write_config

__all__ = [
    "ALPHA_PER_RANK",
    "FULL_FINETUNE_LR",
    "LARGE_MODEL_RANK",
    "METHODS",
    "PUBLISH_REPO_PLACEHOLDER",
    "RANK_BY_SIZE",
    "SEQ_LEN_MULTIPLE",
    "SEQ_LEN_PERCENTILE",
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
    "lora_alpha_for",
    "lora_rank_for",
    "measure_token_lengths",
    "nearest_rank_percentile",
    "propose_seq_len",
    "render_config",
    "write_config",
]
