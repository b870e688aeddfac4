"""Evaluate: does a selection move a model toward its target? Held-out examples -> training-free metrics
(DSIR's KL reduction, NAG similarity) -> tiny proxy LMs trained per arm and seed -> paired intervals.

Callable: ``nagindex.evaluate(selections, index_dir, target=..., ...)`` is ``nagindex.evaluate.run.evaluate``
(see its docstring).
"""
import sys

from nagindex import CallablePackage

sys.modules[__name__].__class__ = CallablePackage
