"""Explain fixtures: the evaluation tests' tiny multiple-choice target and indexes encoded with the golden
fixture's 4-layer model (``tests/evaluate/conftest.py``), shared rather than built twice."""
from tests.evaluate.conftest import arith_target, oracle_index, plain_target, prose_index  # noqa: F401
