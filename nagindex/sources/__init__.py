"""Reading sources, below both ingest and query (it imports neither).

``inputs.py`` (find input files, local or remote) -> ``read.py`` (records of every format, + ``render.py``:
``--text-template``) -> the documents ingest encodes; ``features.py`` reads reference-format feature files
(``nagindex import``, targets given as features); ``fetch.py`` reads texts back by position (``--with-text``,
decontamination); ``datasets.py`` reads target examples (package data, the Hub, local files) and
``records.py`` local record files, whole or as keyed columns (``--quality-file``, ``--group-file``).
"""
