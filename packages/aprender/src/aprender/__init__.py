"""aprender: primitives and formats for fine-tuning.

Subpackages are imported on demand (``import aprender.format``) so that importing ``aprender``
stays cheap and torch is loaded only where it is needed.
"""

from aprender.errors import AprenderError

__version__ = "0.1.0"
__all__ = ["AprenderError", "__version__"]
