"""The index: what ingest writes and query reads (LMDB store, chunk layout, derived files, fingerprints)."""
