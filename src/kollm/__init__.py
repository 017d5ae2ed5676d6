"""kollm: build Korean-centric bilingual language models (Trillion 7B, DNA 1.0)."""

__version__ = "0.1.0"
