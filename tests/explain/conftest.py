"""Explain fixtures: the evaluation tests' tiny multiple-choice target, a plain one, and a pool of prose
encoded with the golden fixture's 4-layer model (``tests/evaluate/conftest.py``), reused, not rewritten."""
from tests.evaluate.conftest import arith_target, plain_target, prose_index  # noqa: F401
