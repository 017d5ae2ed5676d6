"""Data: documents, curation, shards, packing and the chat / preference / SFT batches.

IGNORE is the label of a token no loss is taken on (PyTorch's `cross_entropy` ignore_index and
Hugging Face's convention): every batch builder here writes it and every objective skips it.
"""

IGNORE = -100
