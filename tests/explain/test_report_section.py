"""``nagindex report`` ends with the explanation section: each target's profile and its top selected
documents, linked to their explanations on the same page."""
from __future__ import annotations

import re

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from nagindex.cli import main
from nagindex.query.request import TargetRequest
from nagindex.query.run import query


@pytest.mark.parametrize("name", ["arith.parquet", "arith_parts"])
def test_report_links_top_documents_to_their_explanations(prose_index, arith_target, tmp_path, name):
    """A selection file, or the folder of parts the shards write (``-o DIR``)."""
    sel = tmp_path / name
    query([TargetRequest("file", str(arith_target))], prose_index, k=12, max_examples=40, out=sel)
    page_path = tmp_path / "arith.html"
    top = pq.read_table(sorted(sel.glob("*.parquet")) if sel.is_dir() else sel).sort_by("rank")
    top = top.column("docid").to_pylist()[:10]
    result = CliRunner().invoke(main, ["report", str(sel), "--index", str(prose_index), "-o", str(page_path),
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    page = page_path.read_text()
    section = page.split("<h2>Explanation: profile neurons and top documents</h2>", 1)[1]
    assert "Profile of arith" in section and "40 target examples, 120 pool documents" in section
    links = re.findall(r"<td>([\d,]+)</td><td><a href='#(explain-0-\d+)'>([^<]+)</a>", section)
    assert [(int(rank), docid) for rank, _, docid in links] == [(i + 1, d) for i, d in enumerate(top)]
    for _, anchor, docid in links:
        assert f"<h3 id='{anchor}'>{docid}: rank " in section
    assert section.endswith("</body></html>")
