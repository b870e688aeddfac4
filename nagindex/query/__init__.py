"""Query: target -> profile -> score -> select -> write.

Callable: ``nagindex.query(targets, index_dir, k=..., fraction=..., ...)`` is
``nagindex.query.run.query`` (see its docstring).
"""
import sys

from nagindex import CallablePackage

sys.modules[__name__].__class__ = CallablePackage
