"""``explain()``: a target's profile, and on request one document's explanation and the deactivation test.

The profile (``profile.py``) costs a pass over the pool's neuron counts and no model where the target's
NAGs are cached in the index; ``doc`` adds one scoring pass (``doc.py``); ``deactivate`` loads the
index's backbone and answers held-out examples once per arm (``deactivate.py``): minutes on a CPU.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nagindex.errors import NagIndexError
from nagindex.explain.deactivate import (
    DEFAULT_DRAWS,
    DEFAULT_HELDOUT,
    DeactivationResult,
)
from nagindex.explain.doc import DocExplanation
from nagindex.explain.profile import DEFAULT_TOP, ProfileExplanation, write_json
from nagindex.query.request import TargetLike

#: profile examples of a deactivation test when none are given: the rest are held out (paper Sec. 4.1: 200
#: examples reproduce the full set's ranking)
DEACTIVATION_EXAMPLES = 200


@dataclass
class Explanation:
    """What ``explain`` computed: always the profile, the document and the deactivation test when asked."""

    profile: ProfileExplanation
    doc: DocExplanation | None = None
    deactivation: DeactivationResult | None = None
    json_out: Path | None = None
    html_out: Path | None = None

    def table(self) -> str:
        parts = [self.profile.table()]
        parts += [] if self.doc is None else [self.doc.table()]
        parts += [] if self.deactivation is None else [self.deactivation.table()]
        return "\n\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.profile.to_dict(), "doc": None if self.doc is None else self.doc.to_dict(),
                "deactivation": None if self.deactivation is None else self.deactivation.to_dict()}


def explain(target: TargetLike, index_dir: str | os.PathLike = "idx", *, doc: str | None = None,
            deactivate: bool = False, top: int = DEFAULT_TOP, max_examples: int | None = None,
            example_seed: int = 0, power: float = 1.0, weighting: str = "none", draws: int = DEFAULT_DRAWS,
            heldout: int = DEFAULT_HELDOUT, against: TargetLike | Sequence[TargetLike] = (),
            rank: str = "frequency", device: str = "auto", json_out: str | os.PathLike | None = None,
            html_out: str | os.PathLike | None = None) -> Explanation:
    """Explain one ``target`` (a registry name, or a mapping as ``query`` takes) on the index at ``index_dir``.

    - always: its ``top`` neurons per layer with target and pool shares and lift, concentration and the
      layers that separate it from the pool (``ProfileExplanation``);
    - ``doc``: why that docid ranks where it does, scored with ``power`` and ``weighting`` as a query would;
    - ``deactivate``: the paper's test: the ``top`` neurons per layer switched off in the index's backbone,
      against the intact backbone, ``draws`` random draws and the neurons of each ``against`` target, on
      ``heldout`` examples the profile did not use; ``rank="lift"`` switches off each target's ``top`` neurons
      of highest lift over the pool instead of its most frequent.

    The target's examples are drawn as a query draws them (``max_examples``, ``example_seed``); the
    deactivation test needs some held out, so there ``max_examples`` defaults to 200. ``json_out`` and
    ``html_out`` write the result as JSON and as an HTML page with plots.
    """
    from nagindex.explain.deactivate import deactivation_test
    from nagindex.explain.doc import explain_doc
    from nagindex.explain.profile import explain_profile
    from nagindex.query.request import as_targets

    requests = as_targets(target)
    if len(requests) != 1:
        raise NagIndexError(f"explain takes one target, got {len(requests)}")
    request = requests[0]
    if deactivate and max_examples is None:
        max_examples = DEACTIVATION_EXAMPLES
    for path in (json_out, html_out):
        if path is not None and Path(path).resolve() == Path(index_dir).resolve():
            raise NagIndexError(f"{path}: would overwrite the index")
    out = Explanation(explain_profile(request, index_dir, top=top, max_examples=max_examples,
                                      example_seed=example_seed, device=device))
    if doc is not None:
        out.doc = explain_doc(request, index_dir, doc, max_examples=max_examples, example_seed=example_seed,
                              power=power, weighting=weighting, device=device)
    if deactivate:
        out.deactivation = deactivation_test(request, index_dir, top=top, draws=draws, heldout=heldout,
                                             max_examples=max_examples, example_seed=example_seed,
                                             against=as_targets(against) if against else (),
                                             device=device, rank=rank)
    if json_out is not None:
        write_json(json_out, out.to_dict())
        out.json_out = Path(json_out)
    if html_out is not None:
        from nagindex.explain.html import write_page

        out.html_out = write_page(out, html_out)
    return out
