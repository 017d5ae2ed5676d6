"""kollm merge: mergekit-compatible model merging (linear / soup, SLERP, task arithmetic, TIES)
that streams tensor by tensor. `merge(config, out)` runs a mergekit YAML (or dict);
`soup(model_dirs, out)` averages N Hugging Face directories uniformly."""

from kollm.merge.config import MergeConfig, parse_config
from kollm.merge.run import merge, soup

__all__ = ["MergeConfig", "merge", "parse_config", "soup"]
