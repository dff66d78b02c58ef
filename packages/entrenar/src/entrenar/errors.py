"""Every exception entrenar raises on purpose.

Messages are complete one-liners for the user (a `ConfigError` has one line per problem); the CLI
prints them without a traceback (unless ``--debug``) and exits with code 2.
"""

from __future__ import annotations

from aprender.errors import AprenderError


class EntrenarError(AprenderError):
    """Base class: the message is complete and meant for the user."""


class OptimizerError(EntrenarError, ValueError):
    """An optimizer, clipping or parameter-group argument is invalid (negative lr, betas outside [0, 1))."""


class SchedulerError(EntrenarError, ValueError):
    """A learning-rate schedule argument is invalid (negative warmup, total_steps not above warmup_steps)."""


class ModelConfigError(EntrenarError, ValueError):
    """A model config.json is unsupported or invalid (unknown model_type or RoPE type, missing key, bad value)."""


class CheckpointError(EntrenarError):
    """Checkpoint weights do not fit the model (missing, unexpected or mis-shaped tensors) or cannot be found."""


class ModelInputError(EntrenarError, ValueError):
    """Inputs to a model forward pass are inconsistent (shapes, mask length, cache use)."""


class QuantizationError(EntrenarError, ValueError):
    """A tensor cannot be quantized (non-finite values, wrong rank or dtype) or a quantization argument is invalid."""


class GradientEngineError(EntrenarError, ValueError):
    """A gradient-engine argument is invalid (no micro-batches, missing labels, non-scalar loss, no layers found)."""


class PrecisionError(GradientEngineError):
    """A device and dtype pair has no mixed-precision policy (float16 on CPU, an unknown dtype or device)."""


class NonFiniteError(EntrenarError, FloatingPointError):
    """The loss or a gradient is inf or NaN; raised before the optimizer step, so the weights are unchanged."""


class LoraError(EntrenarError, ValueError):
    """A LoRA request is invalid: a bad rank/alpha/init, targets that match nothing, an adapter that does not fit."""


class DataError(EntrenarError, ValueError):
    """Training data cannot be used: no files at the path, unknown or mixed format, empty dataset, a bad option."""


class InvalidRecordError(DataError):
    """One data record is malformed (bad JSON, missing field, wrong type, empty reply); the message names file:line."""


class ConfigError(EntrenarError, ValueError):
    """A training config is invalid (YAML syntax, unknown key, wrong type, bad value): one line per problem found,
    each naming the file and key path."""


class GenerationError(EntrenarError, ValueError):
    """A generation request is invalid (empty prompt, out-of-vocabulary id, bad sampling value, no chat template)."""


class InitError(EntrenarError, ValueError):
    """`entrenar init` cannot write a config: the output exists, the base model lacks config.json or a tokenizer."""


class TrainingInterrupted(EntrenarError):
    """SIGINT/SIGTERM stopped training after a checkpoint was saved (`entrenar train` exits 130, not 2).

    Attributes:
        step: The last optimizer step taken (and saved).
        checkpoint: The folder of the saved checkpoint.
    """

    def __init__(self, message: str, *, step: int, checkpoint: object) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


class PublishError(EntrenarError):
    """A model folder cannot be published: not a finished model (a checkpoint), a missing base, a bad option."""


class MergeError(EntrenarError, ValueError):
    """A model merge cannot run as configured: inputs that disagree, a method's constraints, a bad merge config."""
