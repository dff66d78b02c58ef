"""Pruning: importance scores, sparsity masks, SparseGPT, lottery tickets and calibration statistics.

Weights are (out_features, in_features) like ``nn.Linear``; masks are boolean with True = keep.
A typical one-shot flow::

    with CalibrationCollector(model) as collector:
        for batch in batches:
            model(batch)
    stats = collector.stats[name]
    mask = unstructured_mask(wanda_scores(layer.weight, stats.sq_sum), 0.5, scope="row")  # WANDA
    weight, mask = sparsegpt_prune(layer.weight, stats.hessian, 0.5)                      # SparseGPT
"""

from aprender.pruning.calibration import CalibrationCollector, LayerStats
from aprender.pruning.importance import magnitude_scores, wanda_scores
from aprender.pruning.lottery import LotteryTicket, iterative_magnitude_pruning
from aprender.pruning.masks import column_mask, mask_lowest, nm_mask, pruned_count, row_mask, unstructured_mask
from aprender.pruning.sparsegpt import SparseGPTResult, sparsegpt_prune

__all__ = [
    "CalibrationCollector",
    "LayerStats",
    "LotteryTicket",
    "SparseGPTResult",
    "column_mask",
    "iterative_magnitude_pruning",
    "magnitude_scores",
    "mask_lowest",
    "nm_mask",
    "pruned_count",
    "row_mask",
    "sparsegpt_prune",
    "unstructured_mask",
    "wanda_scores",
]
