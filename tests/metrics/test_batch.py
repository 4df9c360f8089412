"""A batch as sent: its quoted form reads back as the expression it quotes."""

from __future__ import annotations

import json
import urllib.parse

from hypothesis import given
from hypothesis import strategies as st

from gpufleet.metrics.batch import batch_expression, quoted_batch_expression
from gpufleet.metrics.promql import check

pools = st.lists(
    # Characters form-quoting changes, ones it keeps, and ones PromQL escapes.
    st.text("abcdefghijklmnopqrstuvwxyz-0123456789 ()+&=%/'~.\"\\", min_size=1, max_size=12),
    min_size=1,
    max_size=12,
    unique=True,
)


@given(pools, st.data())
def test_the_quoted_batch_is_the_batch_quoted(names: list[str], data: st.DataObject) -> None:
    queries = [
        check(f"sum(queue{{pool={json.dumps(n)}}}) + rate(done{{pool={json.dumps(n)}}}[1m])")
        for n in names
    ]
    probed = {q.text for q in data.draw(st.lists(st.sampled_from(queries)))}

    quoted = quoted_batch_expression(queries, probed)

    assert urllib.parse.unquote_plus(quoted) == batch_expression(queries, probed)
    assert urllib.parse.quote_plus(batch_expression(queries, probed)) == quoted
