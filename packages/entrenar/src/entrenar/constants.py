"""entrenar's names in one place: training methods, dtypes, formats and the files of an output folder.

Import-light on purpose, like ``huggingface_hub.constants`` (no torch, no huggingface_hub): the config
schema and the CLI's option choices read these without the heavy imports. The Hugging Face file names
(``config.json``, tokenizer files) are aprender's (`aprender.constants`).
"""

from __future__ import annotations

from typing import Literal, get_args

from aprender.constants import CONFIG_FILES, DTYPE_NAMES, TOKENIZER_FILES

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "ALL_LINEAR",
    "AUTO_LAYERS",
    "CHECKPOINTS_DIR",
    "COPIED_FILES",
    "DATA_FORMATS",
    "DTYPES",
    "FINAL_MODEL_NAME",
    "HIDDEN_LOSSES",
    "HIDDEN_SCHEDULES",
    "IGNORE_INDEX",
    "LORA_INITS",
    "METHODS",
    "METRICS_NAME",
    "OUTPUTS",
    "PUBLISH_FORMATS",
    "QAT_INTEGER_FORMATS",
    "QAT_NON_GGUF_FORMATS",
    "QUANTIZE_SAMPLES",
    "QUANTIZE_SEQ_LEN",
    "QUANT_TYPES",
    "TECHNIQUE_NAMES",
    "TRAINER_STATE_NAME",
    "TRAIN_ON",
    "DataFormat",
]

METHODS = ("lora", "qlora", "full")
"""Training methods: a config's method (`TrainConfig.method`), ``entrenar init --method``; the ``method`` of
``final_model.json`` files written before ``techniques``."""
OUTPUTS = ("adapter", "full")
"""What an output folder holds (``final_model.json`` ``output``): a PEFT adapter or a whole model."""
TECHNIQUE_NAMES = {
    "full": "full fine-tuning",
    "lora": "LoRA",
    "qlora": "QLoRA",
    "merge": "model merging",
    "distill": "knowledge distillation",
    "extract-lora": "LoRA extraction",
    "prune": "pruning",
    "qat": "quantization-aware training",
}
"""How model cards name the techniques of ``final_model.json``'s ``techniques`` list; others by their own name."""
DTYPES = ("auto", *DTYPE_NAMES)
"""``model.dtype`` and ``entrenar generate --dtype``: ``auto`` keeps the checkpoint's."""
DataFormat = Literal["text", "prompt_completion", "alpaca", "messages", "sharegpt"]
DATA_FORMATS: tuple[DataFormat, ...] = get_args(DataFormat)
"""Training record formats (``data.format`` also takes ``auto``: detect one from the records)."""
PUBLISH_FORMATS = ("safetensors", "gguf")

TRAIN_ON = ("completion", "all")
"""``data.train_on``: the loss on the completions (replies) only, or on every token."""
LORA_INITS = ("default", "gaussian", "pissa", "none")
"""``lora.init``: how the adapter starts (`entrenar.lora.config` says what each draws)."""
ALL_LINEAR = "all-linear"
"""``lora.target_modules`` value selecting every linear layer but the LM head (PEFT's)."""
QUANT_TYPES = ("nf4", "int8")
"""``quantize.type``: the frozen base of QLoRA."""
QAT_INTEGER_FORMATS = ("int8", "int4")
"""``qat.format`` values that take a ``group_size``."""
QAT_NON_GGUF_FORMATS = ("nf4", *QAT_INTEGER_FORMATS)
"""``qat.format`` values that are not GGUF file types (no GGUF file stores them as trained)."""
IGNORE_INDEX = -100
HIDDEN_LOSSES = ("mse", "cosine")
"""``distill.hidden.loss``: how paired hidden states are compared (`entrenar.distill.hidden`)."""
HIDDEN_SCHEDULES = ("constant", "progressive")
"""``distill.hidden.schedule``: every layer pair from the start, or one after the other from the bottom."""
AUTO_LAYERS = "auto"
"""``distill.hidden.layers`` value pairing every student layer with the teacher layer at the same depth."""
"""Label of positions that count for nothing (prompt tokens, padding, each sample's last token)."""

# A PEFT adapter folder (peft's names).
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"

# A training output folder (DESIGN.md section 4).
FINAL_MODEL_NAME = "final_model.json"
METRICS_NAME = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE_NAME = "trainer_state.json"
"""Written into every ``checkpoints/step-N/``: a folder holding it is a checkpoint, not a finished model."""
COPIED_FILES = (*CONFIG_FILES, *TOKENIZER_FILES)
"""Files of a model folder that describe the model and travel with its (merged) weights."""

QUANTIZE_SAMPLES = 128
"""``entrenar quantize --samples`` by default: calibration windows."""
QUANTIZE_SEQ_LEN = 512
"""``entrenar quantize --seq-len`` by default: llama-imatrix's default context."""
