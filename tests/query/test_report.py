"""``nagindex report`` on the golden pool: one HTML file, four real PNGs, the right overlap numbers."""
from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from nagindex.cli import main
from nagindex.errors import NagIndexError
from nagindex.query.report import collect, jaccard_matrix, shared_share
from nagindex.query.report_page import write_report
from nagindex.query.request import TargetRequest
from nagindex.query.run import query

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def mixture_selection(golden_index, target_features, tmp_path_factory) -> Path:
    """The reference's multi_target case: sci picks pool_13, pool_01; story picks pool_11, 05, 07, 01."""
    out = tmp_path_factory.mktemp("rm") / "mix.parquet"
    targets = [TargetRequest("features", str(target_features[t])) for t in ("sci_target", "story_target")]
    query(targets, golden_index, fraction=0.6, mode="paper", out=out)
    return out


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)]


def _assert_pngs(page: str) -> None:
    images = _images(page)
    assert len(images) == 4
    for png in images:
        assert png.startswith(PNG_MAGIC)
        assert len(png) > 2000  # a drawn figure, not an empty canvas


def test_single_target_report(golden_index, target_features, tmp_path):
    sel = tmp_path / "sci.parquet"
    query([TargetRequest("features", str(target_features["sci_target"]))], golden_index, fraction=0.3, out=sel)
    out = write_report(sel, golden_index, tmp_path / "report.html")
    page = out.read_text("utf-8")
    _assert_pngs(page)
    assert "sci_target" in page
    assert "reproduces the selection" in page  # the re-scored pool agrees with the file's scores
    assert "does NOT reproduce" not in page
    assert "15 documents" in page  # pool size in the summary
    assert "<table class='overlap'>" not in page  # one target: nothing to overlap


def test_mixture_report_overlap_is_right(mixture_selection, golden_index, tmp_path):
    out = write_report(mixture_selection, golden_index, tmp_path / "mix.html", group_by="docid-prefix")
    page = out.read_text("utf-8")
    _assert_pngs(page)
    assert "sci_target" in page and "story_target" in page
    # {13, 01} vs {11, 05, 07, 01}: 1 shared of 5 distinct docs
    values = [float(v) for v in re.findall(r"<td class='jaccard'>([0-9.]+)</td>", page)]
    assert values == pytest.approx([1.0, 0.2, 0.2, 1.0])
    assert re.search(r"<span class='shared'>([0-9.]+)</span>", page).group(1) == "0.2000"


def test_collect_recovers_the_selection(mixture_selection, golden_index):
    data = collect(mixture_selection, golden_index)
    assert [t.name for t in data.targets] == ["sci_target", "story_target"]
    assert all(t.matches for t in data.targets)
    assert data.similarity.shape == (2, 15)
    assert data.contributions.shape[1] == 4  # 4 layers
    # each top doc's per-layer parts sum to its score for the target that chose it
    sci_rows = np.unique(data.sel_rows[data.sel_target == 0])
    np.testing.assert_allclose(data.contributions.sum(axis=1)[:len(sci_rows)],
                               np.sort(data.similarity[0, sci_rows])[::-1], rtol=0, atol=1e-12)


def test_overlap_helpers():
    sets = [{"a", "b", "c"}, {"b", "c", "d"}, set()]
    m = jaccard_matrix(sets)
    assert m[0, 1] == pytest.approx(0.5) and m[0, 2] == 0.0 and np.all(np.diag(m) == 1.0)
    assert shared_share(sets) == pytest.approx(0.5)  # b, c of a, b, c, d


def test_cli_report(mixture_selection, golden_index, tmp_path):
    out = tmp_path / "cli.html"
    result = CliRunner().invoke(main, ["report", str(mixture_selection), "--index", str(golden_index), "-o",
                                       str(out), "--group-by", "docid-prefix"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and len(_images(out.read_text("utf-8"))) == 4
    assert str(out) in result.output


def test_report_never_overwrites_the_selection(mixture_selection, golden_index):
    before = mixture_selection.read_bytes()
    with pytest.raises(NagIndexError, match="use a .html file name"):
        write_report(mixture_selection, golden_index, mixture_selection)
    assert mixture_selection.read_bytes() == before


def test_missing_manifest_is_a_clear_error(mixture_selection, golden_index, tmp_path):
    lone = tmp_path / "lone.parquet"
    lone.write_bytes(mixture_selection.read_bytes())
    with pytest.raises(NagIndexError, match="manifest"):
        write_report(lone, golden_index, tmp_path / "x.html")
