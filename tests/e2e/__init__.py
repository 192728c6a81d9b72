"""End to end against a real OpenAI-compatible server: Hugging Face ``transformers serve`` with
a tiny random model built at test time. ``make e2e`` runs these alone."""
