"""reftune: reinforced fine-tuning (ReFT, R^3, GRPO) of causal LMs on tasks with verifiable answers."""

__version__ = "0.1.0"
