"""The front door holds: README.md stays short and says what a newcomer needs first (the two set-up
commands, the report, the three Slurm commands, the headline figure with the command that measured
it), and no relative link in README.md or docs/ points at a file or heading that is not there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
README_MAX_LINES = 150

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, where a `#` is a shell comment, not a heading."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: link text kept, lower case, punctuation dropped,
    spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a markdown file, repeated headings numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[str]:
    """The targets of the links and images in a markdown file's prose (not in code)."""
    targets = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        targets += LINK.findall(INLINE_CODE.sub("", line))
    return targets


def broken_links(path: Path) -> list[str]:
    """Each relative link of ``path`` whose file does not exist, or whose anchor names no heading
    of that file, as "<file>: <target> (why)". Links to other sites are not followed."""
    broken = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{path.name}: {target} (no such file)")
        elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
            broken.append(f"{path.name}: {target} (no heading #{anchor} in {linked.name})")
    return broken


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(page):
    assert not broken_links(page), "\n".join(broken_links(page))


def test_the_link_checker_reports_a_broken_link_and_a_broken_anchor(tmp_path):
    """Negative control: the checker above finds what it must (a checker that reads nothing passes)."""
    (tmp_path / "other.md").write_text("# Other page\n\n## A section: `hpml plan`\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[fine](other.md), [fine anchor](other.md#a-section-hpml-plan), [own](#page),\n"
        "[gone](missing.md), ![gone picture](pictures/missing.png), [bad anchor](other.md#no-such-heading),\n"
        "[outside](https://example.org/x.md), `[in code](nowhere.md)`\n\n"
        "```\n[in a block](nowhere-either.md)\n```\n")
    assert broken_links(page) == [
        "page.md: missing.md (no such file)",
        "page.md: pictures/missing.png (no such file)",
        "page.md: other.md#no-such-heading (no heading #no-such-heading in other.md)",
    ]


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; at most {README_MAX_LINES}"


def test_readme_opens_with_the_two_set_up_commands():
    """The first code block a newcomer meets runs the demo and the tests."""
    text = README.read_text(encoding="utf-8")
    first_block = re.search(r"```[a-z]*\n(.*?)```", text, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]


def test_readme_says_what_a_newcomer_needs_first():
    text = README.read_text(encoding="utf-8")
    for needed in ("make demo", "make report", "make test",
                   "make submit-all EXP=seed_study SITE=greene",
                   "make status EXP=seed_study SITE=greene",
                   "make report EXP=seed_study SITE=greene",
                   "](docs/report.png)"):
        assert needed in text, needed


def test_readme_quotes_the_headline_figure_with_its_command_and_file():
    text = README.read_text(encoding="utf-8")
    for needed in ("95,710 tokens/s", "MFU 50.3 %", "3.50×", "make gpu-check", "hpml_core/bench/RESULTS.md",
                   "--precision bf16 --compile --batch-size 32", "--model gpt2-large"):
        assert needed in text, needed
    results = (REPO / "hpml_core" / "bench" / "RESULTS.md").read_text(encoding="utf-8")
    assert "95,710" in results and "50.3 %" in results and "3.50" in results, "RESULTS.md no longer holds the headline"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / target.partition("#")[0]).resolve() for target in links(README)}
    assert DOCS and not [page.name for page in DOCS if page.resolve() not in linked]
