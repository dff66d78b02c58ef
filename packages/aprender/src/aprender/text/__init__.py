"""Tokenization: load/save Hugging Face tokenizers, train byte-level BPE, render chat templates.

Built on `tokenizers` and `jinja2`; transformers is not needed at run time (tests use it as the
oracle). `Tokenizer` reads `tokenizer.json` + `tokenizer_config.json` like transformers'
`AutoTokenizer`; `apply_chat_template` renders like its `apply_chat_template(tokenize=False)`;
`encode_chat` adds token ids and the assistant-token mask used to train on replies only.
"""

from aprender.constants import TOKENIZER_FILE_PATTERNS
from aprender.text.bpe import train_bpe
from aprender.text.chat import (
    ChatEncoding,
    RenderedChat,
    apply_chat_template,
    assistant_token_mask,
    compile_chat_template,
    encode_chat,
    render_with_assistant_spans,
)
from aprender.text.tokenizer import Encoding, Tokenizer

__all__ = [
    "TOKENIZER_FILE_PATTERNS",
    "ChatEncoding",
    "Encoding",
    "RenderedChat",
    "Tokenizer",
    "apply_chat_template",
    "assistant_token_mask",
    "compile_chat_template",
    "encode_chat",
    "render_with_assistant_spans",
    "train_bpe",
]
