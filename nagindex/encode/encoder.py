"""Loading an extractor and turning a window of documents into NAG codes.

The one tokenize + extract step, called by the ingest driver (``ingest.run``), by
Ray workers (``ingest.distributed``) and by target encoding (``query.target_nags``),
so all three produce the same NAGs from the same settings.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from nagindex.data import Reject, Window

if TYPE_CHECKING:
    from nagindex.encode.dense import DenseSpec
    from nagindex.encode.extract import NagExtractor


def build_extractor(
    backbone: str, neuron_types: Sequence[str], *, top_k: int, max_length: int, batch_size: int,
    device: str = "auto", dtype: str | None = None, trust_remote_code: bool = False, dense: "DenseSpec | None" = None,
) -> "NagExtractor":
    """Load the backbone and wrap it in an extractor (the one place a model is loaded); ``dense`` also
    takes NAIT's activations in the same forward (``encode.dense``)."""
    from nagindex.encode.extract import NagExtractor
    from nagindex.models import load_backbone

    bb = load_backbone(backbone, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    return NagExtractor(bb, neuron_types, top_k=top_k, max_length=max_length, batch_size=batch_size, dense=dense)


def describe_extractor(extractor: "NagExtractor") -> dict[str, Any]:
    """What the manifest records about the model that encodes an index.

    ``dtype`` is part of the NAGs' identity (bfloat16 and float32 rank neurons
    differently); ``device_kind`` ("cpu", "cuda") is provenance only.
    """
    from nagindex.models import dtype_name

    bb = extractor.backbone
    return {"weights_sha256": bb.weights_sha256, "num_layers": extractor.num_layers,
            "widths": dict(extractor.widths), "top_k": extractor.top_k,
            "dtype": dtype_name(bb.dtype), "device_kind": bb.device.type, "dense_width": extractor.dense_width}


def encode_window(window: Window, extractor: "NagExtractor") -> Window:
    """Tokenize and extract a window's NAGs; documents with no tokens become rejects (never a NAG)."""
    docs = window.docs
    ids, counts = extractor.tokenize([d.text for d in docs])
    empty = [i for i, seq in enumerate(ids) if not seq]
    if empty:  # e.g. text of characters the tokenizer drops
        window.rejects = window.rejects + [Reject(docs[i].source, docs[i].position, "no tokens", docs[i].docid)
                                           for i in empty]
        keep = [i for i in range(len(docs)) if ids[i]]
        docs, ids, counts = [docs[i] for i in keep], [ids[i] for i in keep], [counts[i] for i in keep]
    window.docs = docs
    window.token_counts = np.array([d.token_count if d.token_count is not None else c
                                    for d, c in zip(docs, counts)], dtype=np.int64)
    window.codes = extractor.codes(ids)
    return window
