"""batch/margin.py: the duplicate margin batch mode's budget reserves, from the folder's results."""

from __future__ import annotations

import pytest

from batchgen.batch.margin import duplicate_margin


def test_no_results_yet_reserves_for_every_result_twice() -> None:
    assert duplicate_margin(0, 0) == 1.0


@pytest.mark.parametrize(("results", "duplicates"), [(6, 4), (12, 7), (100, 60), (1000, 600)])
def test_the_margin_is_above_the_share_seen_and_narrows_with_evidence(
    results: int, duplicates: int
) -> None:
    share = duplicates / results
    margin = duplicate_margin(results, duplicates)
    assert share < margin <= 1.0
    assert duplicate_margin(results * 10, duplicates * 10) < margin


def test_a_clean_service_soon_costs_almost_nothing() -> None:
    assert duplicate_margin(10, 0) < 0.3
    assert duplicate_margin(1000, 0) < 0.005


def test_results_that_came_three_times_count_in_full() -> None:
    assert duplicate_margin(10, 15) == pytest.approx(1.5)
