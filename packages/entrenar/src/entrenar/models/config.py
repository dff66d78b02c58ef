"""One flat `ModelConfig` for the decoder families we build: Llama, Mistral, Qwen2 and Qwen3.

The fields are plain values with string choices, so a config prints, compares and serialises as it
is. `ModelConfig.from_hf_dict` reads a Hugging Face ``config.json`` (transformers 4 and 5 layouts:
RoPE settings under ``rope_parameters`` or ``rope_scaling`` + ``rope_theta``) and fills in the
defaults transformers' config classes use for absent keys; `ModelConfig.to_hf_dict` writes a
``config.json`` that transformers loads into the same architecture.

What differs between the families is carried by three derived switches: ``qkv_bias`` (Qwen2 always
has q/k/v biases, Llama/Qwen3 when ``attention_bias``), ``o_bias`` and ``qk_norm`` (Qwen3's per-head
RMSNorm on queries and keys). Sliding-window attention is ``sliding_window`` plus ``layer_types``,
one ``"full_attention"``/``"sliding_attention"`` entry per layer, as in transformers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aprender.constants import DTYPE_NAMES
from entrenar.errors import ModelConfigError

__all__ = [
    "FULL_ATTENTION",
    "ROPE_TYPES",
    "SLIDING_ATTENTION",
    "SUPPORTED_MODEL_TYPES",
    "ModelConfig",
]

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
ROPE_TYPES = ("default", "linear", "llama3", "yarn")
FULL_ATTENTION = "full_attention"
SLIDING_ATTENTION = "sliding_attention"

_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
# transformers' defaults for keys a config.json may omit (LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config).
_DEFAULT_MAX_POSITIONS = {"llama": 2048, "mistral": 131072, "qwen2": 32768, "qwen3": 32768}
_DEFAULT_WINDOW = 4096
_DEFAULT_KV_HEADS = {"mistral": 8, "qwen2": 32, "qwen3": 32}  # llama: num_attention_heads
_DEFAULT_QWEN_MAX_WINDOW_LAYERS = 28
# Which config.json switches each family's transformers code reads (others are ignored there, so here too).
_READS_ATTENTION_BIAS = ("llama", "qwen3")
_READS_MLP_BIAS = ("llama",)
_HAS_SLIDING_WINDOW = ("mistral", "qwen2", "qwen3")
# RoPE fields each rope type needs (https://huggingface.co/docs/transformers/main/en/internal/rope_utils).
_ROPE_REQUIRED = {
    "default": (),
    "linear": ("rope_factor",),
    "llama3": (
        "rope_factor",
        "rope_low_freq_factor",
        "rope_high_freq_factor",
        "rope_original_max_position_embeddings",
    ),
    "yarn": ("rope_factor", "rope_original_max_position_embeddings"),
}
# rope_parameters key -> ModelConfig field.
_ROPE_KEYS = {
    "factor": "rope_factor",
    "original_max_position_embeddings": "rope_original_max_position_embeddings",
    "low_freq_factor": "rope_low_freq_factor",
    "high_freq_factor": "rope_high_freq_factor",
    "attention_factor": "rope_attention_factor",
    "beta_fast": "rope_beta_fast",
    "beta_slow": "rope_beta_slow",
    "mscale": "rope_mscale",
    "mscale_all_dim": "rope_mscale_all_dim",
    "truncate": "rope_truncate",
}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only causal LM (Llama, Mistral, Qwen2, Qwen3).

    Attributes:
        model_type: ``"llama"``, ``"mistral"``, ``"qwen2"`` or ``"qwen3"``.
        vocab_size: Rows of the token embedding and of the LM head.
        hidden_size: Width of the residual stream.
        intermediate_size: Width of the SwiGLU MLP.
        num_layers: Decoder layers.
        num_heads: Query heads.
        num_kv_heads: Key/value heads (grouped-query attention); divides `num_heads`.
        head_dim: Width of one head (Qwen3 decouples it from hidden_size / num_heads).
        max_position_embeddings: Context length the model was trained for (used by RoPE scaling).
        rms_norm_eps: Epsilon inside every RMSNorm.
        tie_word_embeddings: The LM head reuses the token embedding matrix.
        attention_bias: Llama/Qwen3: biases on q, k, v and o projections.
        mlp_bias: Llama: biases on the MLP projections.
        attention_dropout: Dropout on attention probabilities while training.
        sliding_window: Tokens a query sees in sliding-window layers (itself included), or None.
        layer_types: Per layer ``"full_attention"`` or ``"sliding_attention"``; None picks the family default.
        rope_type: ``"default"``, ``"linear"``, ``"llama3"`` or ``"yarn"``.
        rope_theta: RoPE base.
        rope_factor: Scaling factor (linear, llama3, yarn).
        rope_original_max_position_embeddings: Pre-scaling context length (llama3, yarn).
        rope_low_freq_factor: llama3 low-frequency factor.
        rope_high_freq_factor: llama3 high-frequency factor.
        rope_attention_factor: yarn cos/sin scale; None derives it from the factor (and mscales).
        rope_beta_fast: yarn extrapolation boundary (None: 32).
        rope_beta_slow: yarn interpolation boundary (None: 1).
        rope_mscale: yarn mscale (DeepSeek style), with `rope_mscale_all_dim`.
        rope_mscale_all_dim: yarn mscale_all_dim.
        rope_truncate: yarn rounds the correction range to whole dimensions.
        bos_token_id: Beginning-of-sequence token id.
        eos_token_id: End token id, or several.
        pad_token_id: Padding token id (its embedding row gets no gradient, as in transformers).
        torch_dtype: Dtype the checkpoint was saved in (``"float32"``, ``"bfloat16"``, ``"float16"``) or None.
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    attention_dropout: float = 0.0
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    rope_type: str = "default"
    rope_theta: float = 10000.0
    rope_factor: float | None = None
    rope_original_max_position_embeddings: int | None = None
    rope_low_freq_factor: float | None = None
    rope_high_freq_factor: float | None = None
    rope_attention_factor: float | None = None
    rope_beta_fast: float | None = None
    rope_beta_slow: float | None = None
    rope_mscale: float | None = None
    rope_mscale_all_dim: float | None = None
    rope_truncate: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    torch_dtype: str | None = None

    def __post_init__(self) -> None:
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ModelConfigError(
                f"model_type {self.model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        self._check_sizes()
        self._check_family()
        self._check_rope()
        if self.layer_types is None:
            kind = SLIDING_ATTENTION if self.sliding_window is not None else FULL_ATTENTION
            object.__setattr__(self, "layer_types", (kind,) * self.num_layers)
        self._check_layer_types()
        if self.torch_dtype is not None and self.torch_dtype not in DTYPE_NAMES:
            raise ModelConfigError(f"torch_dtype {self.torch_dtype!r} is not supported; use one of {DTYPE_NAMES}")

    # ------------------------------------------------------------------------------------------ derived

    @property
    def qkv_bias(self) -> bool:
        """Whether q/k/v projections carry a bias (always for Qwen2)."""
        return self.attention_bias or self.model_type == "qwen2"

    @property
    def o_bias(self) -> bool:
        """Whether the attention output projection carries a bias."""
        return self.attention_bias

    @property
    def qk_norm(self) -> bool:
        """Whether queries and keys pass through a per-head RMSNorm before RoPE (Qwen3)."""
        return self.model_type == "qwen3"

    def layer_window(self, layer: int) -> int | None:
        """The sliding window of layer `layer`, or None for full causal attention."""
        assert self.layer_types is not None  # set in __post_init__
        return self.sliding_window if self.layer_types[layer] == SLIDING_ATTENTION else None

    # ------------------------------------------------------------------------------------------ checks

    def _check_sizes(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
            _check_positive_int(name, getattr(self, name))
        for name in ("head_dim", "max_position_embeddings"):
            _check_positive_int(name, getattr(self, name))
        if self.num_heads % self.num_kv_heads:
            raise ModelConfigError(
                f"num_attention_heads {self.num_heads} is not a multiple of num_key_value_heads {self.num_kv_heads}"
            )
        if not self.rms_norm_eps > 0:
            raise ModelConfigError(f"rms_norm_eps {self.rms_norm_eps!r} must be a positive number")
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ModelConfigError(f"attention_dropout {self.attention_dropout!r} must lie in [0, 1)")
        for name in ("bos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ModelConfigError(f"{name} {value} is outside the vocabulary [0, {self.vocab_size})")

    def _check_family(self) -> None:
        family = self.model_type
        if self.attention_bias and family not in _READS_ATTENTION_BIAS:
            raise ModelConfigError(f"attention_bias=True is not part of the {family} architecture; set it to False")
        if self.mlp_bias and family not in _READS_MLP_BIAS:
            raise ModelConfigError(f"mlp_bias=True is not part of the {family} architecture; set it to False")
        if self.sliding_window is not None:
            if family not in _HAS_SLIDING_WINDOW:
                raise ModelConfigError(f"sliding_window is not part of the {family} architecture; set it to None")
            _check_positive_int("sliding_window", self.sliding_window)

    def _check_rope(self) -> None:
        if self.rope_type not in ROPE_TYPES:
            raise ModelConfigError(f"RoPE type {self.rope_type!r} is not supported; supported: {', '.join(ROPE_TYPES)}")
        if not self.rope_theta > 0:
            raise ModelConfigError(f"rope_theta {self.rope_theta!r} must be a positive number")
        missing = [name for name in _ROPE_REQUIRED[self.rope_type] if getattr(self, name) is None]
        if missing:
            raise ModelConfigError(f"RoPE type {self.rope_type!r} needs {', '.join(missing)}; add it to the config")

    def _check_layer_types(self) -> None:
        types = self.layer_types
        assert types is not None
        if len(types) != self.num_layers or any(t not in (FULL_ATTENTION, SLIDING_ATTENTION) for t in types):
            raise ModelConfigError(
                f"layer_types {list(types)} must hold {self.num_layers} entries, each "
                f"{FULL_ATTENTION!r} or {SLIDING_ATTENTION!r}"
            )
        if SLIDING_ATTENTION in types and self.sliding_window is None:
            raise ModelConfigError("layer_types has sliding_attention layers but sliding_window is None; set a window")
        if self.model_type == "mistral" and len(set(types)) > 1:
            raise ModelConfigError("mistral applies its sliding window to every layer; layer_types must be uniform")

    # ------------------------------------------------------------------------------------------ HF I/O

    @classmethod
    def from_hf_dict(cls, raw: Mapping[str, Any]) -> ModelConfig:
        """Read a Hugging Face ``config.json`` dict.

        Args:
            raw: The parsed ``config.json``.

        Returns:
            The config; absent optional keys take transformers' defaults for the family.

        Raises:
            ModelConfigError: Unsupported ``model_type`` or RoPE type, a missing size key, or an invalid value.
        """
        family = raw.get("model_type")
        if family not in SUPPORTED_MODEL_TYPES:
            raise ModelConfigError(
                f"model_type {family!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if raw.get("hidden_act", "silu") != "silu":
            raise ModelConfigError(f"hidden_act {raw['hidden_act']!r} is not supported; only 'silu' is")
        hidden, heads = _required(raw, "hidden_size"), _required(raw, "num_attention_heads")
        window, layer_types = _read_sliding(raw, family, _required(raw, "num_hidden_layers"))
        values: dict[str, Any] = {
            "model_type": family,
            "vocab_size": _required(raw, "vocab_size"),
            "hidden_size": hidden,
            "intermediate_size": _required(raw, "intermediate_size"),
            "num_layers": _required(raw, "num_hidden_layers"),
            "num_heads": heads,
            "num_kv_heads": raw.get("num_key_value_heads", _DEFAULT_KV_HEADS.get(family)) or heads,
            "head_dim": raw.get("head_dim") or hidden // heads,
            "max_position_embeddings": raw.get("max_position_embeddings", _DEFAULT_MAX_POSITIONS[family]),
            "rms_norm_eps": raw.get("rms_norm_eps", 1e-6),
            "tie_word_embeddings": bool(raw.get("tie_word_embeddings", False)),
            "attention_bias": bool(raw.get("attention_bias", False)) and family in _READS_ATTENTION_BIAS,
            "mlp_bias": bool(raw.get("mlp_bias", False)) and family in _READS_MLP_BIAS,
            "attention_dropout": float(raw.get("attention_dropout", 0.0)),
            "sliding_window": window,
            "layer_types": layer_types,
            "bos_token_id": raw.get("bos_token_id"),
            "eos_token_id": _token_ids(raw.get("eos_token_id")),
            "pad_token_id": raw.get("pad_token_id"),
            "torch_dtype": raw.get("dtype") or raw.get("torch_dtype"),
            **_read_rope(raw),
        }
        return cls(**values)

    def to_hf_dict(self) -> dict[str, Any]:
        """The ``config.json`` dict transformers loads into this architecture.

        RoPE settings are written both as ``rope_parameters`` (transformers 5) and as ``rope_theta`` +
        ``rope_scaling`` (transformers 4 and other readers such as llama.cpp's converter).

        Returns:
            A JSON-serialisable dict.
        """
        rope = self._rope_parameters()
        scaling = {key: value for key, value in rope.items() if key != "rope_theta"}
        out: dict[str, Any] = {
            "architectures": [_ARCHITECTURES[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_dropout": self.attention_dropout,
            "rope_parameters": rope,
            "rope_theta": self.rope_theta,
            "rope_scaling": scaling if self.rope_type != "default" else None,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": self.torch_dtype,
        }
        out.update(self._family_keys())
        return out

    def _rope_parameters(self) -> dict[str, Any]:
        rope: dict[str, Any] = {"rope_type": self.rope_type, "rope_theta": self.rope_theta}
        for key, name in _ROPE_KEYS.items():
            value = getattr(self, name)
            if name == "rope_truncate":
                if self.rope_type == "yarn" and not value:
                    rope[key] = False
            elif value is not None:
                rope[key] = value
        return rope

    def _family_keys(self) -> dict[str, Any]:
        if self.model_type == "llama":
            return {"attention_bias": self.attention_bias, "mlp_bias": self.mlp_bias}
        if self.model_type == "mistral":
            return {"sliding_window": self.sliding_window}
        keys: dict[str, Any] = {
            "use_sliding_window": self.sliding_window is not None,
            "sliding_window": self.sliding_window,
            "layer_types": list(self.layer_types or ()),
        }
        if self.model_type == "qwen3":
            keys["attention_bias"] = self.attention_bias
        return keys


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelConfigError(f"{name} {value!r} must be a positive integer")


def _required(raw: Mapping[str, Any], key: str) -> Any:
    if raw.get(key) is None:
        raise ModelConfigError(f"required key {key!r} is missing; the file is not a complete HF config")
    return raw[key]


def _token_ids(value: Any) -> int | tuple[int, ...] | None:
    return tuple(value) if isinstance(value, list) else value


def _read_rope(raw: Mapping[str, Any]) -> dict[str, Any]:
    """RoPE fields from ``rope_parameters`` (transformers 5) or ``rope_scaling`` + ``rope_theta`` (4)."""
    params = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ModelConfigError(f"RoPE type {rope_type!r} is not supported; supported: {', '.join(ROPE_TYPES)}")
    partial = params.get("partial_rotary_factor", raw.get("partial_rotary_factor"))
    if partial not in (None, 1, 1.0):
        raise ModelConfigError(f"partial_rotary_factor {partial!r} is not supported; only 1.0 is")
    values: dict[str, Any] = {
        "rope_type": rope_type,
        "rope_theta": float(params.get("rope_theta", raw.get("rope_theta", 10000.0))),
    }
    for key, name in _ROPE_KEYS.items():
        if params.get(key) is not None:
            values[name] = params[key]
    if rope_type in ("llama3", "yarn") and "rope_original_max_position_embeddings" not in values:
        # transformers falls back to max_position_embeddings (RotaryEmbeddingConfigMixin.standardize_rope_params).
        values["rope_original_max_position_embeddings"] = raw.get("max_position_embeddings")
    return values


def _read_sliding(raw: Mapping[str, Any], family: str, num_layers: int) -> tuple[int | None, tuple[str, ...] | None]:
    """``(sliding_window, layer_types)`` as transformers' config class of `family` resolves them."""
    if family == "llama":
        return None, None
    if family == "mistral":
        return raw.get("sliding_window", _DEFAULT_WINDOW), None
    window = raw.get("sliding_window", _DEFAULT_WINDOW) if raw.get("use_sliding_window", False) else None
    if window is None:
        return None, (FULL_ATTENTION,) * num_layers
    if raw.get("layer_types"):
        return window, tuple(raw["layer_types"])
    first_sliding = raw.get("max_window_layers", _DEFAULT_QWEN_MAX_WINDOW_LAYERS)
    return window, tuple(SLIDING_ATTENTION if i >= first_sliding else FULL_ATTENTION for i in range(num_layers))
