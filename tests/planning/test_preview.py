"""--preview's choice (batchgen/planning/preview.py): every row and var value before repeats."""

from __future__ import annotations

import itertools

from batchgen.planning.preview import pick
from batchgen.spec import JobSpec


def jobs(rows: int, **vars: list[str]) -> list[JobSpec]:
    out = []
    names = list(vars)
    for row in range(rows):
        for combo in itertools.product(*vars.values()):
            values = tuple(zip(names, combo, strict=True))
            out.append(JobSpec(job_id=f"r{row}-" + "-".join(combo), prompt="p",
                               source_file="m.yaml", source_line=row + 1, vars=values))
    return out


def choose(candidates: list[JobSpec], n: int, done: tuple[JobSpec, ...] = ()) -> list[JobSpec]:
    stream = [(j, False) for j in done] + [(j, True) for j in candidates]
    return [candidates[i] for i in pick(stream, n)]


def test_a_4x3_matrix_with_4_shows_all_of_both_vars() -> None:
    js = jobs(1, a=["1", "2", "3", "4"], b=["x", "y", "z"])
    got = choose(js, 4)
    assert {dict(j.vars)["a"] for j in got} == {"1", "2", "3", "4"}
    assert {dict(j.vars)["b"] for j in got} == {"x", "y", "z"}


def test_every_row_before_any_repeat_and_spread_over_the_manifest() -> None:
    js = jobs(10, a=["1", "2"])
    got = choose(js, 10)
    assert sorted(j.source_line for j in got) == list(range(1, 11))
    assert {dict(j.vars)["a"] for j in got} == {"1", "2"}
    plain = jobs(100)
    lines = sorted(j.source_line for j in choose(plain, 4))
    assert lines[0] == 1 and min(b - a for a, b in itertools.pairwise(lines)) >= 20


def test_what_is_done_counts_as_shown_and_all_fit_when_n_is_large() -> None:
    js = jobs(1, a=["1", "2", "3"])
    pending = js[1:]
    got = choose(pending, 2, (js[0],))
    assert {dict(j.vars)["a"] for j in got} == {"2", "3"}
    assert choose(pending, 5) == pending


def test_a_second_round_starts_when_everything_is_shown() -> None:
    js = jobs(1, a=["1", "2"], b=["x", "y"])
    got = choose(js, 3)
    assert len(got) == 3
    # after two jobs show every value, the third still differs from both in one var at least
    assert len({j.vars for j in got}) == 3
