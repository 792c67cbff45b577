"""megastack: Megatron-core GPT pre-training built around model growth."""

__version__ = "0.1.0"
