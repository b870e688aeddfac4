"""Explain a selection: a target's profile neurons against the pool (``profile.py``), the paper's deactivation
test of those neurons on the index's backbone (``deactivate.py``), and why one document ranks where it does
(``doc.py``); ``run.py`` is the entry point, ``html.py`` draws the report section.

Callable: ``nagindex.explain(target, index_dir, ...)`` is ``nagindex.explain.run.explain`` (see its docstring).
"""
import sys

from nagindex import CallablePackage

sys.modules[__name__].__class__ = CallablePackage
