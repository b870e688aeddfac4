"""Ingest: read -> tokenize -> extract -> store -> index.

Callable: ``nagindex.ingest(inputs, index_dir, ...)`` is ``nagindex.ingest.run.ingest``
(see its docstring).
"""
import sys

from nagindex import CallablePackage

sys.modules[__name__].__class__ = CallablePackage
