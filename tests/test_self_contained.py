"""The repository stands alone: no tracked file points at a file outside it, and every doc link resolves.

A clone holds only what `git ls-files` lists; a link to a sibling folder of the checkout, or to notes
kept beside it, reads fine where they happen to exist and breaks for everyone else.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Files that live beside a checkout but not in it. Spelled in pieces so that this file does not match itself.
OUTSIDE = ("../" + "shared", "shared/" + "protocol.md", "shared/" + "design.md", "stack-" + "notes.md")

FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
DOC_MENTION = re.compile(r"(?<![\w./-])docs/[\w.-]+\.(?:md|png)\b")


def tracked_texts() -> dict[str, str]:
    """Every tracked file that decodes as UTF-8 text, by its path in the repository."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    names = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30
    ).stdout.decode()
    texts = {}
    for name in filter(None, names.split("\0")):
        path = ROOT / name
        if not path.is_file():  # deleted in the working tree, not yet committed
            continue
        try:
            texts[name] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # images
            continue
    return texts


def outside_references(texts: dict[str, str]) -> list[str]:
    return [
        f"{name}:{text.count(chr(10), 0, text.find(needle)) + 1}: {needle}"
        for name, text in texts.items()
        for needle in OUTSIDE
        if needle in text
    ]


def markdown_links(text: str) -> list[str]:
    """Link targets of a markdown text, code blocks and code spans left out."""
    prose = CODE_SPAN.sub("", FENCE.sub("", text))
    return LINK.findall(prose)


def broken_links(doc: Path) -> list[str]:
    """Relative links of ``doc`` that do not name an existing file inside the repository."""
    broken = []
    for target in markdown_links(doc.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # a web address, mailto:, or an anchor in the same page
        resolved = (doc.parent / target.split("#", 1)[0]).resolve()
        if not resolved.is_relative_to(ROOT) or not resolved.is_file():
            broken.append(f"{doc.relative_to(ROOT)}: ({target})")
    return broken


def docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_no_tracked_file_refers_to_files_beside_the_repository():
    texts = tracked_texts()
    assert len(texts) > 50 and "README.md" in texts
    found = outside_references(texts)
    assert not found, "points outside the repository:\n" + "\n".join(found)


def test_every_relative_markdown_link_resolves_inside_the_repository():
    checked = [doc for doc in docs() if markdown_links(doc.read_text(encoding="utf-8"))]
    assert ROOT / "README.md" in checked
    broken = [line for doc in docs() for line in broken_links(doc)]
    assert not broken, "links to no file in the repository:\n" + "\n".join(broken)


def test_every_docs_path_named_in_a_tracked_file_exists():
    """Code, help texts and reports name a doc by its path from the root (docs/protocol.md); it must exist."""
    texts = tracked_texts()
    missing = sorted(
        {f"{name}: {m}" for name, text in texts.items() for m in DOC_MENTION.findall(text) if not (ROOT / m).is_file()}
    )
    assert not missing, "names a doc the repository does not have:\n" + "\n".join(missing)


def test_the_matchers_find_what_they_look_for():
    away = OUTSIDE[0] + "/protocol.md"
    text = f'see [p]({away}) and `[x](y)`\n```\n[a](b)\n```\n![plot](plot.png "title")\n'
    assert markdown_links(text) == [away, "plot.png"]
    assert outside_references({"a.md": f"x\n({away})"}) == [f"a.md:2: {OUTSIDE[0]}", f"a.md:2: {OUTSIDE[1]}"]
    assert DOC_MENTION.findall("see docs/protocol.md, not bench/docs/protocol.md") == ["docs/protocol.md"]
