"""Chains (issue 22): ``@ID`` in ``images:`` and ``edit_of: ID``, resolved across a manifest.

A row names other jobs by the ``id`` the user gave; only once every row is read can those names
be checked (unknown, ambiguous, a cycle, too deep) and turned into job ids. So a manifest that may
hold chains (its text has an ``@`` or ``edit_of``) is read whole; one that cannot streams as it
always did. A child's job id hashes its parents' job ids, so editing a parent gives its
descendants new ids (they run again) while editing a child leaves its parents alone. Jobs come
out parents first (by depth, then manifest order), so a plan never meets a child before its
parents.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Iterable
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

from batchgen.errors import Problem
from batchgen.spec import MAX_CHAIN_DEPTH, Chain, JobSpec, Reference

# What a text must contain for a manifest to hold a chain; absent, the manifest streams.
CHAIN_MARKERS = (b"@", b"edit_of")
DIGEST_LENGTH = 10


def template_problem(text: str, names: list[str]) -> str | None:
    """Why an ``@ID``, ``edit_of`` or ``id`` template cannot be filled from the row's vars."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        return f"{text!r}: {exc}"
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if not field.isidentifier() or spec or conversion or field not in names:
            return f"{text!r}: placeholder {{{field}}} is not one of the row's vars"
    return None


def placeholders(text: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(text) if f}


def hashed(extras: dict[str, Any] | None, edit_of: str | None) -> dict[str, Any] | None:
    """The hashed extras with ``edit_of`` joined in when set (a job without keeps its id)."""
    if edit_of is None:
        return extras
    return {**(extras or {}), "edit_of": edit_of}


def marker(edit_of: str | None, references: tuple[Reference, ...]) -> Chain | None:
    """A job's chain as the row wrote it (user ids), or None for a job that hangs on nothing."""
    if edit_of is None and not any(r.source.startswith("@") for r in references):
        return None
    return Chain(edit_of=edit_of)


def fill_refs(refs: tuple[Reference, ...], filled: dict[str, str]) -> tuple[Reference, ...]:
    return tuple(
        Reference(source=r.source.format_map(filled))
        if r.source.startswith("@") and "{" in r.source else r
        for r in refs
    )


@dataclass(frozen=True, slots=True)
class ChainSummary:
    """What ``validate`` says of a manifest's chains."""

    chains: int  # groups of jobs joined by references or edits
    chained_jobs: int  # jobs that hang on another
    depth: int  # the longest path from a root, in edges
    width: int  # the most jobs of one chain at one depth

    def line(self) -> str:
        return (f"chains: {self.chains} ({self.chained_jobs} jobs made from another's image or "
                f"conversation), depth {self.depth}, width {self.width}")


def may_chain(data: bytes) -> bool:
    return any(m in data for m in CHAIN_MARKERS)


def _parent_names(spec: JobSpec) -> list[tuple[str, str]]:
    """(field, user id) for each job this one names, edit_of first."""
    out: list[tuple[str, str]] = []
    chain = spec.chain
    if chain is not None and chain.edit_of is not None:
        out.append(("edit_of", chain.edit_of))
    out.extend(("images", r.source[1:]) for r in spec.references if r.source.startswith("@"))
    return out


def resolve(
    jobs: list[JobSpec], file: str
) -> tuple[list[JobSpec], list[Problem], ChainSummary | None]:
    """Every job of a manifest, chains resolved: parents first, ids that follow their parents.

    Problems name the file, the row's line and the field: an id nobody has, one several jobs
    share (``count`` or vars without a template that picks one), the job itself, a cycle, a
    chain deeper than :data:`~batchgen.spec.MAX_CHAIN_DEPTH`.
    """
    by_name: dict[str, list[int]] = {}
    for i, job in enumerate(jobs):
        if job.user_id is not None:
            by_name.setdefault(job.user_id, []).append(i)
    problems: list[Problem] = []
    edges: dict[int, list[int]] = {}
    for i, job in enumerate(jobs):
        if job.chain is None and not any(r.source.startswith("@") for r in job.references):
            continue
        got: list[int] = []
        for fld, name in _parent_names(job):
            where = (file, job.source_line, fld)
            found = by_name.get(name, [])
            if name == job.user_id:
                problems.append(Problem(*where, f"@{name} names this job itself"))
            elif not found:
                problems.append(Problem(*where, f"@{name}: no job has the id {name!r}"))
            elif len(found) > 1:
                problems.append(Problem(*where, (
                    f"@{name} names {len(found)} jobs (count or vars give them one id); give "
                    "each its own id with a {var} template, e.g. id: \"{character}-sheet\"")))
            else:
                got.append(found[0])
        edges[i] = got
    if problems:
        return jobs, _unique(problems), None
    if not edges:
        return jobs, [], None
    depth, problem = _depths(edges, jobs, file)
    if problem is not None:
        return jobs, [problem], None
    return _rewrite(jobs, edges, depth)


def _depths(
    edges: dict[int, list[int]], jobs: list[JobSpec], file: str
) -> tuple[dict[int, int], Problem | None]:
    """Each chained job's depth (Kahn's order, no recursion); a Problem for a cycle or a chain
    over the limit. What Kahn's order cannot reach lies on a cycle or hangs on one."""
    children: dict[int, list[int]] = {}
    waiting: dict[int, int] = {}
    nodes = {i for child, ps in edges.items() for i in (child, *ps)}
    for child, parents in edges.items():
        waiting[child] = len(parents)
        for p in parents:
            children.setdefault(p, []).append(child)
    depth = {i: 0 for i in nodes if not waiting.get(i)}
    ready = sorted(depth)
    while ready:
        node = ready.pop()
        for child in children.get(node, []):
            depth[child] = max(depth.get(child, 0), depth[node] + 1)
            waiting[child] -= 1
            if not waiting[child]:
                ready.append(child)
    stuck = sorted(i for i in nodes if i not in depth or waiting.get(i))
    if stuck:
        first = jobs[stuck[0]]
        names = ", ".join(str(jobs[i].user_id) for i in stuck[:6])
        return depth, Problem(file, first.source_line, _field(first),
                              f"a cycle: these jobs hang on each other: {names}")
    for i in sorted(depth, key=lambda i: jobs[i].source_line):
        if depth[i] > MAX_CHAIN_DEPTH:
            job = jobs[i]
            return depth, Problem(file, job.source_line, _field(job), (
                f"the chain to this job is {depth[i]} steps deep; at most {MAX_CHAIN_DEPTH} "
                "(every step sends the earlier turns again)"))
    return depth, None


def _field(job: JobSpec) -> str:
    return "edit_of" if job.chain is not None and job.chain.edit_of is not None else "images"


def _rewrite(
    jobs: list[JobSpec], edges: dict[int, list[int]], depth: dict[int, int]
) -> tuple[list[JobSpec], list[Problem], ChainSummary]:
    # Groups: the jobs joined by any edge, named by their first job in manifest order.
    group = list(range(len(jobs)))

    def find(i: int) -> int:
        while group[i] != i:
            group[i] = group[group[i]]
            i = group[i]
        return i

    for child, parents in edges.items():
        for p in parents:
            a, b = find(child), find(p)
            if a != b:
                group[max(a, b)] = min(a, b)
    names: dict[int, str] = {}
    members = {i for child, ps in edges.items() for i in (child, *ps)}
    order = sorted(range(len(jobs)), key=lambda i: (depth.get(i, 0), i))
    new_ids: dict[int, str] = {}
    out: list[JobSpec] = []
    for i in order:
        job = jobs[i]
        if i not in members:
            out.append(job)
            continue
        parents = edges.get(i, [])
        job_id = job.job_id
        if parents:
            mixed = "\n".join([job_id, *(new_ids[p] for p in parents)])
            job_id = job_id[:-DIGEST_LENGTH] + sha256(mixed.encode()).hexdigest()[:DIGEST_LENGTH]
        new_ids[i] = job_id
        chain = job.chain or Chain()
        parent_ids = tuple(new_ids[p] for p in parents)
        edit_of = parent_ids[0] if chain.edit_of is not None else None
        refs = job.references
        if any(r.source.startswith("@") for r in refs):
            at = iter(parent_ids[1:] if edit_of is not None else parent_ids)
            refs = tuple(dataclasses.replace(r, parent=next(at)) if r.source.startswith("@")
                         else r for r in refs)
        # The group's name: its first root (jobs come by depth), the same for every member.
        name = names.setdefault(find(i), job_id)
        out.append(dataclasses.replace(
            job, job_id=job_id, references=refs,
            chain=Chain(edit_of=edit_of, parents=parent_ids, group=name, depth=depth.get(i, 0)),
        ))
    return out, [], _summary(out)


def _summary(jobs: Iterable[JobSpec]) -> ChainSummary:
    levels: dict[tuple[str, int], int] = {}
    groups: set[str] = set()
    chained = deepest = 0
    for job in jobs:
        chain = job.chain
        if chain is None:
            continue
        groups.add(chain.group)
        chained += bool(chain.parents)
        deepest = max(deepest, chain.depth)
        key = (chain.group, chain.depth)
        levels[key] = levels.get(key, 0) + 1
    return ChainSummary(len(groups), chained, deepest, max(levels.values(), default=0))


def _unique(problems: list[Problem]) -> list[Problem]:
    return list(dict.fromkeys(problems))
