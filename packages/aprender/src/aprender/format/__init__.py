"""Model file formats: safetensors, GGUF and GGUF to HF conversion."""
