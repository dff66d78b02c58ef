"""Our own decoder for the Llama, Mistral, Qwen2 and Qwen3 families, numerically matching transformers.

Example:
    >>> from entrenar.models import from_pretrained, save_pretrained  # doctest: +SKIP
    >>> model = from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct", dtype="bfloat16")  # doctest: +SKIP
    >>> logits = model(input_ids, attention_mask=attention_mask)  # (B, T, V)  # doctest: +SKIP
    >>> save_pretrained(model, "out")  # doctest: +SKIP
"""

from entrenar.models.cache import KVCache
from entrenar.models.config import SUPPORTED_MODEL_TYPES, ModelConfig
from entrenar.models.head_loss import IGNORE_INDEX, LossOutput
from entrenar.models.linear import LinearFactory, SelfInitializing, make_linear
from entrenar.models.loading import from_pretrained, loaded_dtype, read_config, save_pretrained
from entrenar.models.model import CausalLM

__all__ = [
    "IGNORE_INDEX",
    "SUPPORTED_MODEL_TYPES",
    "CausalLM",
    "KVCache",
    "LinearFactory",
    "LossOutput",
    "ModelConfig",
    "SelfInitializing",
    "from_pretrained",
    "loaded_dtype",
    "make_linear",
    "read_config",
    "save_pretrained",
]
