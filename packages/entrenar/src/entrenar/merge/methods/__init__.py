"""Merge methods, one module per family, by name in `METHODS` (mergekit's ``merge_methods``).

| ``merge_method`` | base | inputs | paper |
|---|---|---|---|
| ``linear`` | none | 1+ | https://arxiv.org/abs/2203.05482 |
| ``task_arithmetic`` | required | 1+ | https://arxiv.org/abs/2212.04089 |
| ``ties`` | required | 1+ | https://arxiv.org/abs/2306.01708 |
| ``dare_ties``, ``dare_linear`` | required | 1+ | https://arxiv.org/abs/2311.03099 |
| ``breadcrumbs``, ``breadcrumbs_ties`` | required | 1+ | https://arxiv.org/abs/2312.06795 |
| ``della``, ``della_linear`` | required | 1+ | https://arxiv.org/abs/2406.11617 |
| ``slerp`` | required | base + 1 | https://en.wikipedia.org/wiki/Slerp |
| ``nuslerp`` | optional | 2 besides the base | https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md |
| ``model_stock`` | required | base + 2 or more | https://arxiv.org/abs/2403.19522 |
| ``passthrough`` | none | exactly 1 | https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md |
"""

from entrenar.merge.methods.registry import ALL_METHODS, METHODS, get_method
from entrenar.merge.methods.validate import validate_group

__all__ = ["ALL_METHODS", "METHODS", "get_method", "validate_group"]
