"""YAML manifests with line numbers: a SafeLoader that remembers where each mapping and key start.

Also checks the manifest-level keys (model, provider, base_url, defaults, jobs).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from batchgen.errors import Problem
from batchgen.manifest import hints
from batchgen.manifest.base import Bad
from batchgen.manifest.fields import MANIFEST_KEYS, PARSERS, parse_model, unknown_field

PROVIDERS = ("anyfast", "google")


class YamlMap(dict[str, Any]):
    """A YAML mapping that remembers where it and each of its keys start (1-based lines)."""

    line: int = 0
    key_lines: dict[str, int]
    dup_keys: list[tuple[str, int]]


class YamlSeq(list[Any]):
    item_lines: list[int]


class YamlSyntaxError(ValueError):
    """A YAML file that does not parse. ``plain``: the message is batchgen's own wording of a
    common slip (a tab, a mis-indented key), so it needs no "YAML syntax error" in front."""

    def __init__(self, message: str, line: int, field: str = "", *, plain: bool = False) -> None:
        super().__init__(message)
        self.line = line
        self.field = field
        self.plain = plain


# A manifest nests five levels at most (jobs > job > vars/meta > key > list); PyYAML composes
# and constructs recursively, so a file of 5,000 '[' was a 3,000-line RecursionError.
MAX_YAML_DEPTH = 64


class _LineLoader(yaml.SafeLoader):
    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_YAML_DEPTH} levels deep (a manifest "
                    "needs five at most)", self.peek_event().start_mark)  # type: ignore[no-untyped-call]
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_map(loader: yaml.SafeLoader, node: yaml.MappingNode) -> YamlMap:
    own = [k for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"]
    loader.flatten_mapping(node)  # `<<: *base` merges come first, so explicit keys win
    result = YamlMap()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    result.dup_keys = []
    seen: set[str] = set()
    for key_node in own:
        key = str(loader.construct_object(key_node, deep=True))
        if key in seen:
            result.dup_keys.append((key, key_node.start_mark.line + 1))
        seen.add(key)
    for key_node, value_node in node.value:
        key = str(loader.construct_object(key_node, deep=True))
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_seq(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> YamlSeq:
    result = YamlSeq(loader.construct_object(child, deep=True) for child in node.value)
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    try:
        return loader.construct_yaml_int(node)
    except ValueError:  # past Python's 4300-digit limit: a one-line problem, not a traceback
        raise yaml.constructor.ConstructorError(
            None, None, f"a {len(node.value)}-character number is far too large", node.start_mark
        ) from None


_LineLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)

# YAML 1.1 reads `16:9` as the base-60 integer 969 and `007` as octal. Aspect ratios are written
# unquoted all the time, so keep the number rules but drop those two readings.
_INT = re.compile(r"^[-+]?(?:0|[1-9][0-9_]*|0x[0-9a-fA-F_]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_LineLoader.yaml_implicit_resolvers = {
    first: [
        (tag, _INT if tag.endswith(":int") else _FLOAT if tag.endswith(":float") else regexp)
        for tag, regexp in resolvers
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


# Constructs that open on one line and close on another. When one is never closed, PyYAML's
# problem mark is wherever parsing gave up (often the end of the file); its context mark is where
# the construct opened, which is the line to fix. (For other errors the context is a whole block
# mapping or sequence, whose start says nothing: there the problem mark is the better line.)
_OPENERS = {
    "while parsing a flow sequence": "a '[' list",
    "while parsing a flow mapping": "a '{' mapping",
    "while scanning a quoted scalar": "a quoted string",
    "while parsing a flow node": "a '[' or '{'",
}


def _syntax_error(exc: yaml.MarkedYAMLError) -> YamlSyntaxError:
    problem = exc.problem or str(exc)
    at = exc.problem_mark.line + 1 if exc.problem_mark is not None else 0
    opened = _OPENERS.get(exc.context or "")
    if opened and exc.context_mark is not None:
        start = exc.context_mark.line + 1
        if start != at:
            return YamlSyntaxError(
                f"{opened} opened here is never closed ({problem}, line {at})", start
            )
    return YamlSyntaxError(problem, at)


# What PyYAML says when a line is indented off its siblings: the line became a new block it
# did not expect, or was read as the rest of the value above and then held a colon.
_OFF_INDENT = ("expected <block end>", "mapping values are not allowed here")
_KEY_LINE = re.compile(r"^( *)((?:- +)*)([^\s#:'\"][^:#]*?)\s*:(?:\s|$)")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _slip(exc: yaml.MarkedYAMLError, data: bytes) -> YamlSyntaxError | None:
    """A tab or a mis-indented key, said the way a person would fix it; None for the rest."""
    mark = exc.problem_mark
    if mark is None:
        return None
    lines = data.decode("utf-8", errors="replace").splitlines()
    at = min(mark.line, len(lines) - 1)
    if at < 0:
        return None
    problem = exc.problem or ""
    if "'\\t'" in problem:
        lead = next((i for i in range(at, -1, -1)
                     if "\t" in lines[i][: len(lines[i]) - len(lines[i].lstrip())]), None)
        if lead is not None:
            return YamlSyntaxError(f"line {lead + 1} is indented with a tab: YAML does not allow "
                                   "tabs; indent with spaces", lead + 1, plain=True)
        return YamlSyntaxError(f"a tab at column {mark.column + 1}: YAML does not allow tabs "
                               "there; use spaces", at + 1, plain=True)
    if not problem.startswith(_OFF_INDENT):
        return None
    here = _KEY_LINE.match(lines[at])
    if here is None or here.group(2):
        return None
    for i in range(at - 1, -1, -1):
        above = _KEY_LINE.match(lines[i])
        if above is None:
            if lines[i].strip() and not lines[i].lstrip().startswith("#"):
                return None  # the value above spans lines: not a plain list of fields
            continue
        sibling = len(above.group(1)) + len(above.group(2))
        mine = len(here.group(1))
        if mine == sibling:
            return None
        whose = "the job's other fields" if _in_item(lines, i, sibling) else "the line above it"
        return YamlSyntaxError(
            f"line {at + 1} is indented {mine} spaces, {whose} {sibling} (YAML reads "
            "nesting from indentation: line the fields up)", at + 1, here.group(3).strip(),
            plain=True)
    return None


def _in_item(lines: list[str], i: int, column: int) -> bool:
    """Whether line ``i``'s field, at ``column``, belongs to a list item (a job)."""
    for line in reversed(lines[: i + 1]):
        m = _KEY_LINE.match(line)
        if m and m.group(2) and len(m.group(1)) + len(m.group(2)) == column:
            return True  # the item's first field, after its "- "
        if line.strip() and _indent(line) < column:
            return line.lstrip().startswith("- ")
    return False


def load_yaml(data: bytes) -> object:
    try:
        return yaml.load(data, Loader=_LineLoader)  # a SafeLoader subclass: no object tags
    except yaml.MarkedYAMLError as exc:
        raise (_slip(exc, data) or _syntax_error(exc)) from exc
    except yaml.reader.ReaderError as exc:
        line = data.count(b"\n", 0, exc.position) + 1
        raise YamlSyntaxError(
            f"not valid {exc.encoding or 'UTF-8'} text: {exc.reason}; {hints.SAVE_AS_UTF8}", line
        ) from exc
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(str(exc), 0) from exc


def check_top(doc: YamlMap, name: str, top: dict[str, str | None]) -> list[Problem]:
    """Check the manifest-level keys, filling ``top`` with the valid ones."""
    problems: list[Problem] = []

    def bad(key: str, message: str) -> None:
        problems.append(Problem(name, doc.key_lines.get(key, doc.line), key, message))

    for key, line in doc.dup_keys:
        problems.append(Problem(name, line, key, "set twice"))
    for key, value in doc.items():
        if key.startswith("x-"):
            continue  # room for YAML anchors to reuse (`x-base: &base ...`), as docker-compose does
        if key not in MANIFEST_KEYS:
            known = ", ".join(MANIFEST_KEYS)
            bad(key, f"unknown top-level key (known: {known}; keys starting x- are free)")
        elif value is None or key in ("defaults", "jobs"):
            continue
        elif key == "model":
            try:
                top["model"] = parse_model(value, False)
            except Bad as exc:
                bad(key, str(exc))
        elif key == "provider":
            if value in PROVIDERS:
                top["provider"] = value
            else:
                bad(key, f"{value!r} is not one of {', '.join(PROVIDERS)}")
        elif not isinstance(value, str) or not value.startswith(("http://", "https://")):
            bad(key, "must be an http(s) URL")
        else:
            top["base_url"] = value.rstrip("/")
    defaults = doc.get("defaults")
    if defaults is not None and not isinstance(defaults, YamlMap):
        bad("defaults", "must be a mapping of job fields")
    elif isinstance(defaults, YamlMap):
        problems.extend(Problem(name, ln, key, "set twice") for key, ln in defaults.dup_keys)
        for key in defaults:
            line = defaults.key_lines[key]
            if key == "id":
                problems.append(Problem(name, line, key, "cannot have a default: ids are per job"))
            elif key not in PARSERS:
                problems.append(Problem(name, line, key, unknown_field(key)))
    jobs = doc.get("jobs")
    if jobs is None:
        bad("jobs", "required: a list of jobs")
    elif not isinstance(jobs, YamlSeq):
        bad("jobs", "must be a list of jobs")
    return problems
