"""Ingest: read -> tokenize -> extract -> store -> index."""
