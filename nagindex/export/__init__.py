"""Selections out to training data (``nagindex write-training``): the last stage, after ``query``.

It reads a selection file and the sources its rows came from, never the query code:
``training`` plans and runs the work (a task per group of sources), ``writers`` holds one output
format per class (parquet, ``jsonl.zst``, Megatron-LM ``.bin/.idx``).
"""
