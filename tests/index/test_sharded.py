"""``open_index`` on a sharded index: per-shard views and hidden rows, columns read only where asked."""
from __future__ import annotations

import numpy as np

from nagindex.index.sharded import ShardedView, open_index, split_rows, take_codes, take_docids, view_parts
from tests.query import pools


def test_sharded_view_reads_rows_where_they_lie(tmp_path):
    files = pools.write_pool(tmp_path / "data", sizes=(300, 40, 3, 120))
    one = open_index(pools.build_index(files, tmp_path / "one"))
    view = open_index(pools.build_index(files, tmp_path / "three", 3))
    assert isinstance(view, ShardedView)
    # opening gathers no column: counts come from the shards, hidden rows subtracted
    assert not {"codes", "token_counts", "docids", "positions", "source_ids"} & set(vars(view))
    assert (len(view), view.total_tokens) == (len(one), one.total_tokens) == (460, int(np.sum(one.token_counts)))
    assert [len(p) for p in view.parts] == [len(p.view) - len(p.hidden) for p in view.parts]
    assert sum(len(p.hidden) for p in view.parts) == 3
    assert [p.start for p in view.parts] == np.cumsum([0] + [len(p) for p in view.parts[:-1]]).tolist()
    for part in view.parts:  # the v-th visible row, found on the hidden rows alone
        assert part.local_rows(np.arange(len(part))).tolist() == part.kept().tolist()
    rows = np.array([459, 0, 7, 300, 7, 343, 200, 458])
    assert take_docids(view, rows) == one.docids.take(rows)
    np.testing.assert_array_equal(take_codes(view, rows), np.asarray(one.codes)[rows])
    owners = [(p.shard, w.tolist()) for p, w, _ in split_rows(view.parts, rows)]
    assert sorted(i for _, w in owners for i in w) == list(range(len(rows)))
    # the whole columns, gathered on demand, are the one-folder index's
    assert view.docids.take(np.arange(460)) == one.docids.take(np.arange(460))
    np.testing.assert_array_equal(view.token_counts, np.asarray(one.token_counts))
    np.testing.assert_array_equal(view.codes, np.asarray(one.codes))
    assert [view.sources[i] for i in view.source_ids] == [one.sources[i] for i in np.asarray(one.source_ids)]
    # a one-folder index streams as one part
    (part,) = view_parts(one)
    assert (part.start, len(part), part.kept().tolist()) == (0, 460, list(range(460)))
