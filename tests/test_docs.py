"""Run the Python code blocks of the documentation, so that the docs stay true.

Every fenced block opened with ```` ```python ```` in ``docs/*.md`` runs, in
the order of the file, in one fresh namespace per file (later blocks build on
earlier ones), with the working directory in a temporary folder.  Tracebacks
point at the Markdown file and line.  A block preceded by the line
``<!-- docs-test: skip -->`` is shown but not run (for code that needs data
or hardware a test machine lacks).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parents[1] / "docs"
SKIP_MARK = "<!-- docs-test: skip -->"
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """The runnable ```python blocks of a Markdown text.

    Parameters
    ----------
    text : str
        Markdown source.

    Returns
    -------
    list of (int, str)
        The 1-based line of the first code line, and the code, for every
        block not preceded by :data:`SKIP_MARK`.
    """
    blocks = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip().splitlines()
        if before and before[-1].strip() == SKIP_MARK:
            continue
        first_line = text.count("\n", 0, match.start(1)) + 1
        blocks.append((first_line, match.group(1)))
    return blocks


DOC_FILES = sorted(path for path in DOCS.glob("*.md") if python_blocks(path.read_text()))


def test_block_extraction():
    text = "intro\n```python\na = 1\n```\n<!-- docs-test: skip -->\n```python\nb\n```\n"
    text += "```bash\nls\n```\n```python\nc = a\n```\n"
    assert python_blocks(text) == [(3, "a = 1\n"), (13, "c = a\n")]


@pytest.mark.skipif(not DOC_FILES, reason="no docs/*.md file with Python code")
@pytest.mark.parametrize("path", DOC_FILES, ids=lambda path: path.name)
def test_doc_code_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Execute the blocks of one page in order, in one fresh namespace."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny fits: more threads only add overhead on a busy machine
    namespace: dict = {"__name__": f"docs_{path.stem}"}
    try:
        for line, code in python_blocks(path.read_text()):
            # Pad so that line numbers in tracebacks are those of the Markdown file.
            exec(compile("\n" * (line - 1) + code, str(path), "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
