"""The YAML training config (schema v1): dataclasses, strict loading, command-line overrides.

Typical use::

    cfg = load_config("config.yaml", overrides=["training.max_steps=10"])
    cfg.method                      # "full", "lora" or "qlora"
    cfg.techniques                  # ("qlora", "distill") with a distill: section
    write_resolved_config(cfg, cfg.training.output_dir)

Every problem is one line naming the file and key path, e.g.
``config.yaml: lora.rnak: unknown key; did you mean rank?``; one `entrenar.errors.ConfigError` reports
all the problems of a file (and its overrides) at once.
"""

from entrenar.config.load import config_from_mapping, load_config, parse_yaml
from entrenar.config.overrides import apply_overrides, parse_override
from entrenar.config.resolve import CONFIG_FILENAME, config_to_dict, write_resolved_config
from entrenar.config.schema import (
    DATA_FORMATS,
    DTYPES,
    LORA_INITS,
    OPTIMIZER_NAMES,
    PUBLISH_FORMATS,
    QUANT_TYPES,
    SCHEDULER_NAMES,
    TRAIN_ON,
    DataSection,
    DistillHidden,
    DistillSection,
    DistillTeacher,
    LoraSection,
    ModelSection,
    OptimizerSection,
    PruneSection,
    PublishSection,
    QatSection,
    QuantizeSection,
    SchedulerSection,
    TrainConfig,
    TrainingSection,
)
from entrenar.errors import ConfigError

__all__ = [
    "CONFIG_FILENAME",
    "DATA_FORMATS",
    "DTYPES",
    "LORA_INITS",
    "OPTIMIZER_NAMES",
    "PUBLISH_FORMATS",
    "QUANT_TYPES",
    "SCHEDULER_NAMES",
    "TRAIN_ON",
    "ConfigError",
    "DataSection",
    "DistillHidden",
    "DistillSection",
    "DistillTeacher",
    "LoraSection",
    "ModelSection",
    "OptimizerSection",
    "PruneSection",
    "PublishSection",
    "QatSection",
    "QuantizeSection",
    "SchedulerSection",
    "TrainConfig",
    "TrainingSection",
    "apply_overrides",
    "config_from_mapping",
    "config_to_dict",
    "load_config",
    "parse_override",
    "parse_yaml",
    "write_resolved_config",
]
