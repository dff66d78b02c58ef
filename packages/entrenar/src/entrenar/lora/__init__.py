"""LoRA, rsLoRA, DoRA and QLoRA adapters, interoperable with PEFT's files.

- `LoraConfig`: rank, alpha, dropout, targets (names, regex, ``"all-linear"``), rsLoRA, DoRA, init.
- `LoRALinear`: a frozen base (dense or quantized) plus the adapter; merge/unmerge, a ``disabled`` switch.
- `apply_lora` (a built model) or `lora_linear_factory` (chosen when ``entrenar.models`` builds the model);
  `mark_only_lora_trainable`, `disable_lora`.
- `save_adapter` / `load_adapter`: ``adapter_config.json`` + ``adapter_model.safetensors`` as PEFT writes them.
- `merge_and_unload` (in memory) and `merge_adapter_into_checkpoint` (on disk, tensor by tensor).
- `extract_lora`: the adapter (truncated SVD of each linear layer's change) that turns a base into a fine-tune.

Example:
    >>> config = LoraConfig(rank=16, alpha=32, target_modules="all-linear")  # doctest: +SKIP
    >>> apply_lora(model, config); mark_only_lora_trainable(model)  # doctest: +SKIP
    >>> save_adapter(model, "out", config, base_model_name_or_path="Qwen/Qwen2.5-0.5B")  # doctest: +SKIP
"""

from entrenar.lora.config import ALL_LINEAR, LORA_INITS, LoraConfig
from entrenar.lora.extract import Extraction, extract_lora
from entrenar.lora.linear import LoRALinear
from entrenar.lora.merge import merge_adapter_into_checkpoint, merge_and_unload, merge_weight
from entrenar.lora.peft_io import (
    AdapterConfig,
    adapter_state_dict,
    check_adapters_match,
    load_adapter,
    load_adapter_weights,
    read_adapter_config,
    read_adapter_weights,
    save_adapter,
    save_adapter_weights,
)
from entrenar.lora.targeting import (
    LoraLinearFactory,
    TrainableParameters,
    apply_lora,
    disable_lora,
    linear_modules,
    lora_linear_factory,
    lora_modules,
    mark_only_lora_trainable,
    select_target_modules,
)

__all__ = [
    "ALL_LINEAR",
    "LORA_INITS",
    "AdapterConfig",
    "Extraction",
    "LoRALinear",
    "LoraConfig",
    "LoraLinearFactory",
    "TrainableParameters",
    "adapter_state_dict",
    "apply_lora",
    "check_adapters_match",
    "disable_lora",
    "extract_lora",
    "linear_modules",
    "load_adapter",
    "load_adapter_weights",
    "lora_linear_factory",
    "lora_modules",
    "mark_only_lora_trainable",
    "merge_adapter_into_checkpoint",
    "merge_and_unload",
    "merge_weight",
    "read_adapter_config",
    "read_adapter_weights",
    "save_adapter",
    "save_adapter_weights",
    "select_target_modules",
]
