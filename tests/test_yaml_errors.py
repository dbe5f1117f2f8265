"""YAML syntax errors point at the line to fix: where an unclosed bracket or quote opened."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import cli


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        # The case: a bracket opened on line 5 and never closed; PyYAML gives up at the
        # end of the file (line 6 or 7), which is not where the mistake is.
        ("jobs:\n  - prompt: a\n  - prompt: b\n  - prompt: c\n    images: [a.png, b.png\n"
         "  - prompt: d\n", 5, "a '[' list opened here is never closed"),
        ('jobs:\n  - prompt: "a lighthouse\n  - prompt: b\n  - prompt: c\n', 2,
         "a quoted string opened here is never closed"),
        ("jobs:\n  - prompt: a\n    vars: {animal: [cat, dog]\n  - prompt: b\n", 3,
         "opened here is never closed"),
    ],
)
def test_unclosed_bracket_or_quote_points_at_where_it_opened(
    tmp_path: Path, text: str, line: int, what: str
) -> None:
    m = tmp_path / "m.yaml"
    m.write_text(text)
    r = cli("validate", m)
    assert r.code == 2
    (message,) = r.stderr.strip().splitlines()
    assert message.startswith(f"batchgen: {m}:{line}: YAML syntax error: "), message
    assert what in message


def test_other_syntax_errors_keep_the_line_where_parsing_failed(tmp_path: Path) -> None:
    m = tmp_path / "m.yaml"
    m.write_text("jobs:\n  - prompt: a\n  - prompt: b\n   bad: indent\n")
    r = cli("validate", m)
    assert r.code == 2
    assert f"{m}:4: YAML syntax error: " in r.stderr, r.stderr
