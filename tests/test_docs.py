"""The README and docs/ stay true: links resolve, the CLI reference is current, commands run.

- Every relative link and image in README.md and docs/*.md points at an existing file, and a
  ``#anchor`` into a markdown file at one of its headings (GitHub's slug rules).
- docs/cli.md is exactly what docs/make_cli_reference.py writes now.
- Every command line in a ```bash block is either quick (this test runs it, in a temporary
  folder with a temporary AUTOSCULPT_CACHE, and wants exit 0) or long: listed in the
  "Long commands" table of docs/results.md with its measured time. A new command that is
  neither fails with a message saying which to do. Commands with placeholders belong in
  ```text blocks.
- The README is at most 200 lines and starts with the two set-up commands.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
AUTOSCULPT = Path(sys.executable).parent / "autosculpt"

# Commands that finish in seconds without a search: run by test_quick_commands_run.
QUICK = {
    "autosculpt --help",
    "autosculpt env",
    "autosculpt studies",
    "autosculpt data info",
    "autosculpt data preview --out preview.png",
}

LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^```(\w*)\s*$")


def _strip_code(text: str) -> str:
    """The page without fenced blocks and inline code, where link syntax is not a link."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()) or line.strip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            out.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(out)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, seen, fenced = set(), {}, False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(page: Path) -> list[str]:
    links = LINK.findall(_strip_code(page.read_text(encoding="utf-8")))
    return [link for link in links if not re.match(r"^[a-z][a-z0-9+.-]*:", link, re.I)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for link in relative_links(page):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no file {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{link}: no heading with anchor #{anchor} in {target.relative_to(ROOT)}")
    assert not broken, f"broken links in {page.relative_to(ROOT)}:\n  " + "\n  ".join(broken)


def test_slugs_follow_github():
    assert slug("Bring your nnU-Net") == "bring-your-nnu-net"
    assert slug("Your own class: `module:Class`") == "your-own-class-moduleclass"
    assert slug("One scale per machine: anchors") == "one-scale-per-machine-anchors"
    assert slug("At ACDC's full size") == "at-acdcs-full-size"


def _load_cli_reference():
    spec = importlib.util.spec_from_file_location("make_cli_reference", DOCS / "make_cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_current():
    expected = _load_cli_reference().render()
    current = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert current == expected, (
        "docs/cli.md differs from the parsers' --help: rerun `.venv/bin/python docs/make_cli_reference.py`"
    )


def shown_commands() -> list[tuple[str, str]]:
    """(page, command) for every command line in a ```bash or ```sh block: continuation lines
    joined, trailing comments and blank lines dropped, whitespace collapsed."""
    commands = []
    for page in PAGES:
        language, pending = None, ""
        for line in page.read_text(encoding="utf-8").splitlines():
            fence = FENCE.match(line.strip()) if line.strip().startswith("```") else None
            if line.strip().startswith("```"):
                language = (fence.group(1) if fence else "other") if language is None else None
                continue
            if language not in ("bash", "sh", "shell"):
                continue
            text = pending + " " + line.strip() if pending else line.strip()
            if text.endswith("\\"):
                pending = text[:-1].strip()
                continue
            pending = ""
            text = re.sub(r"\s+#.*$", "", text) if not text.startswith("#") else ""
            text = " ".join(text.split())
            if text:
                commands.append((str(page.relative_to(ROOT)), text))
    return commands


def long_commands() -> dict[str, str]:
    """The "Long commands" table of docs/results.md: command -> measured time."""
    text = (DOCS / "results.md").read_text(encoding="utf-8")
    section = text.split("## Long commands", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`") and cells[0].endswith("`"):
            table[" ".join(cells[0].strip("`").split())] = cells[1]
    return table


def test_long_commands_have_a_measured_time():
    table = long_commands()
    assert table, "docs/results.md has no Long commands table"
    missing = [command for command, time in table.items() if not re.search(r"\d", time)]
    assert not missing, f"long commands without a measured time in docs/results.md: {missing}"


def test_every_shown_command_is_quick_or_listed_as_long():
    table = long_commands()
    unknown = [f"{page}: {command}" for page, command in shown_commands()
               if command not in QUICK and command not in table]
    assert not unknown, (
        "commands shown in ```bash blocks that are neither run by tests/test_docs.py (add them to QUICK "
        "if they finish in seconds) nor listed with their measured time in docs/results.md's "
        "'Long commands' table (or, if they need your own paths, show them in a ```text block):\n  "
        + "\n  ".join(unknown)
    )
    shown = {command for _, command in shown_commands()}
    unused = sorted(QUICK - shown)
    assert not unused, f"QUICK lists commands no page shows any more: {unused}"


def _run(command: str, folder: Path, cache: Path) -> tuple[str, subprocess.CompletedProcess]:
    folder.mkdir(parents=True)
    argv = [str(AUTOSCULPT), *command.split()[1:]]
    env = {**os.environ, "AUTOSCULPT_CACHE": str(cache), "COLUMNS": "100"}
    env.pop("AUTOSCULPT_STORAGE", None)
    done = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=120)
    return command, done


def test_quick_commands_run(tmp_path):
    shown = sorted(QUICK & {command for _, command in shown_commands()})
    assert shown, "no quick command is shown in the docs"
    cache = tmp_path / "cache"
    # data info first fills the cache that data preview then reads; the others need no data.
    first = [c for c in shown if c == "autosculpt data info"]
    rest = [c for c in shown if c not in first]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda item: _run(item[1], tmp_path / f"run{item[0]}", cache),
                                enumerate(first + rest)))
    failed = [f"{command}: exit {done.returncode}\n{done.stderr[-1500:]}" for command, done in results
              if done.returncode != 0]
    assert not failed, "commands shown in the docs failed as written:\n" + "\n".join(failed)
    preview = next((p for p in tmp_path.glob("run*/preview.png")), None)
    if "autosculpt data preview --out preview.png" in shown:
        assert preview is not None and preview.stat().st_size > 0


def test_readme_is_short_and_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail to docs/"
    assert lines[0].startswith("# autosculpt")
    assert lines[2] == "```bash" and lines[5] == "```"
    assert lines[3].startswith("python3 -m venv .venv") and lines[4].startswith("python3 -m venv .venv")
