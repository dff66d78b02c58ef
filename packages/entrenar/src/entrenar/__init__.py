"""entrenar: the simplest honest path from training data to a fine-tuned model on the Hub."""

from entrenar.errors import EntrenarError

__version__ = "0.1.0"
__all__ = ["EntrenarError", "__version__"]
