"""One-shot pruning (``entrenar prune``): magnitude, WANDA and SparseGPT with calibration data, layer by layer.

Modules: `spec` (methods, patterns, the checked request; no torch, so the CLI can import it), `calibration`
(random token windows from a data file), `oneshot` (layer-by-layer calibration and pruning of a `CausalLM`),
`run` (the command: resolve, prune, score, write the output folder). The algorithms are `aprender.pruning`'s.
"""
