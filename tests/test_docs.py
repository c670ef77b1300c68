"""Docs that cannot rot: every shell block of the README and docs/ runs or says why not, every relative
link resolves, and the generated reference pages match the code.

Convention: a fenced ``bash`` block is preceded by a marker line,

    <!-- docs-test: run -->               run by this test (tiny models, a temporary directory)
    <!-- docs-test: skip REASON -->       not run, and REASON says why (a GPU, a server left running, ...)

An unmarked ``bash`` block fails the test, so a new command is either run here or explicitly excused.
A ``# -> TEXT`` line in a run block is a promise about its output: TEXT must appear in what the block
prints. The run blocks of one page run in order in one temporary directory (a later block may use what an
earlier one made), as a user would paste them into a shell at the project's root: ``.venv/bin/``
there holds ``tuneloop`` and ``python`` for the interpreter running the tests, and the environment
carries no ``TUNELOOP_*``, ``MLFLOW_*`` or ``PREFECT_API_*`` setting of the test session.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
SHELLS = {"bash", "sh", "shell"}
MARKER = re.compile(r"<!--\s*docs-test:\s*(run|skip)\b\s*(.*?)\s*-->")
FENCE = re.compile(r"^(```+)(\S*)[^\n]*\n(.*?)^\1\s*$", re.S | re.M)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|<img[^>]+src=\"([^\"]+)\"|!\[[^\]]*\]\(([^)\s]+)\)")
BLOCK_TIMEOUT_S = 300  # the tiny demo is the longest block; a hung command fails instead of stalling CI


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    code: str
    marker: str | None  # "run", "skip" or None
    reason: str

    def __str__(self) -> str:
        return f"{_name(self.page)}:{self.line}"


def _name(path: Path) -> str:
    """A page's name in messages: its path in the project, or its file name elsewhere (the tests' own pages)."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a page, each with the docs-test marker on the lines just above it."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        above = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.search(above)
        found.append(
            Block(
                page,
                line,
                match.group(2).lower(),
                match.group(3),
                marker and marker.group(1),
                marker.group(2) if marker else "",
            )
        )
    return found


def shell_blocks(page: Path) -> list[Block]:
    return [b for b in blocks(page) if b.lang in SHELLS]


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    result = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        plain = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
        slug = "".join(c for c in plain if c in " -_" or unicodedata.category(c)[0] in "LN").replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def links(page: Path) -> list[tuple[int, str]]:
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), page.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code is not a link
    return [(text.count("\n", 0, m.start()) + 1, next(g for g in m.groups() if g)) for m in LINK.finditer(text)]


def broken_links(page: Path) -> list[str]:
    """Relative links of ``page`` whose file or #anchor does not exist (web links are not fetched)."""
    problems = []
    for line, target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            problems.append(f"{_name(page)}:{line}: {target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{_name(page)}:{line}: {target} (no heading #{anchor} in {resolved.name})")
    return problems


def test_every_shell_block_is_marked_run_or_skip_with_a_reason():
    unmarked = [str(b) for page in PAGES for b in shell_blocks(page) if b.marker is None]
    assert not unmarked, f"shell blocks without a <!-- docs-test: run|skip REASON --> marker: {unmarked}"
    unexplained = [str(b) for page in PAGES for b in shell_blocks(page) if b.marker == "skip" and not b.reason]
    assert not unexplained, f"skipped shell blocks must say why: {unexplained}"


def test_the_readme_stays_a_five_minute_read():
    """The README says what tuneloop does, how to start and where each task's page is; the rest is in docs/."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 250, f"README.md has {lines} lines: move detail into docs/"


def test_every_relative_link_resolves():
    problems = [p for page in PAGES for p in broken_links(page)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_link_check_catches_a_missing_file_and_a_missing_anchor(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other page\n\n## A `code` heading\n")
    page.write_text(
        "[ok](other.md#a-code-heading) [file](missing.md) [anchor](other.md#nowhere) "
        "[web](https://example.com/x) `[not a link](nope.md)`\n"
    )
    assert broken_links(page) == [
        "page.md:1: missing.md (no such file)",
        "page.md:1: other.md#nowhere (no heading #nowhere in other.md)",
    ]


def test_generated_reference_pages_match_the_code():
    """docs/configuration.md, docs/feedback.schema.json and data-format.md's field table come from the code."""
    from tuneloop.reference import stale

    assert stale(ROOT / "docs") == [], "run: python -m tuneloop.reference"


def test_a_stale_reference_page_is_detected(tmp_path):
    from tuneloop.reference import CONFIG_PAGE, main, stale

    assert main(["--docs", str(tmp_path)]) == 0 and stale(tmp_path) == []
    page = tmp_path / CONFIG_PAGE
    page.write_text(page.read_text().replace("TUNELOOP_TUNE__N_TRIALS", "TUNELOOP_TUNE__TRIALS"))
    assert stale(tmp_path) == [CONFIG_PAGE] and main(["--docs", str(tmp_path), "--check"]) == 1


def test_the_configuration_page_names_every_field_with_its_variable_and_default():
    from tuneloop.config import LoopConfig

    page = (ROOT / "docs" / "configuration.md").read_text()
    for name, field in LoopConfig.model_fields.items():
        sub = getattr(field.annotation, "model_fields", None)
        names = [f"TUNELOOP_{name.upper()}__{s.upper()}" for s in sub] if sub else [f"TUNELOOP_{name.upper()}"]
        for variable in names:
            assert f"| `{variable}` |" in page, variable
    assert "| `TUNELOOP_TUNE__EPOCHS` | int (>= 1) | `8` |" in page


def test_the_schema_accepts_the_documented_examples_and_refuses_what_the_api_refuses():
    jsonschema = pytest.importorskip("jsonschema")
    import json

    from tuneloop.reference import feedback_schema

    validator = jsonschema.Draft202012Validator(feedback_schema())
    text = (ROOT / "docs" / "data-format.md").read_text()
    records = [json.loads(line) for line in re.findall(r"^(\{.*\})$", text, re.M)]
    assert len(records) == 3
    assert [not list(validator.iter_errors(r)) for r in records] == [True, True, False]  # the third: rating "meh"
    assert list(validator.iter_errors({**records[0], "colour": "red"}))  # no other field


def test_every_extra_named_in_docs_and_messages_exists():
    """`pip install 'tuneloop[X]'` and `-e '.[X]'` anywhere in the docs or the code name a real extra."""
    import tomllib

    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    sources = [*PAGES, *ROOT.glob("tuneloop/**/*.py"), *ROOT.glob("cli/*.py"), ROOT / "Makefile"]
    named = {m for path in sources for m in re.findall(r"(?:tuneloop|\.)\[(\w+)\]", path.read_text())}
    assert named and named <= extras, f"extras named but not defined: {named - extras}"
    assert "gpu" in extras


def test_make_demo_installs_no_system_package():
    """The browser only the MLflow UI test needs is installed by `make test`, never by `make demo`."""
    dry = subprocess.run(["make", "-n", "-B", "demo"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "apt-get" not in dry and "chromium" not in dry
    assert (
        "chromium"
        in subprocess.run(["make", "-n", "-B", "test"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    )


def _shell_env(workdir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TUNELOOP_", "MLFLOW_", "PREFECT_API_", "PREFECT_HOME"))
    }
    bin_dir = workdir / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name, module in (("tuneloop", "-m tuneloop.cli.main"), ("python", "")):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" {module} "$@"\n')
        script.chmod(0o755)
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        COLUMNS="200",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        HF_HUB_OFFLINE="1",
    )
    return env


def run_blocks(page: Path, workdir: Path) -> None:
    """Run a page's run-marked shell blocks in order in ``workdir``; fail naming the block that broke."""
    env = _shell_env(workdir)
    for block in (b for b in shell_blocks(page) if b.marker == "run"):
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.code],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, (
            f"{block} failed (exit {done.returncode}):\n{block.code}\n--- output ---\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
        for expected in re.findall(r"^# -> (.+)$", block.code, re.M):  # the page's promise of what it prints
            assert " ".join(expected.split()) in " ".join(output.split()), (
                f"{block}: the page says it prints {expected!r}; it printed:\n{output[-3000:]}"
            )


RUNNABLE = [p for p in PAGES if any(b.marker == "run" for b in shell_blocks(p))]


@pytest.mark.parametrize("page", RUNNABLE, ids=[str(p.relative_to(ROOT)) for p in RUNNABLE])
def test_runnable_blocks_run(page, tmp_path):
    run_blocks(page, tmp_path)


def test_a_broken_command_or_a_wrong_promised_output_fails_the_docs_test(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- docs-test: run -->\n```bash\n.venv/bin/tuneloop no-such-command\n```\n")
    (tmp_path / "work").mkdir()
    with pytest.raises(AssertionError, match="page.md:2 failed"):
        run_blocks(page, tmp_path / "work")
    page.write_text(
        "<!-- docs-test: run -->\n```bash\necho one  two\n# -> one two\n```\n"
        "<!-- docs-test: run -->\n```bash\necho three\n# -> four\n```\n"
    )
    (tmp_path / "again").mkdir()
    with pytest.raises(AssertionError, match="page.md:7: the page says it prints 'four'"):
        run_blocks(page, tmp_path / "again")
