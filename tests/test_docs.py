"""The repository stands alone: no reference to design files outside it, and every
reference to a document or source path inside it (``docs/design.md §5``, ``bench/NOTES.md``,
``tests/test_escnn.py``) points at a file — and a section — that exists."""
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# built at run time so that this file does not match itself
FORBIDDEN = ["DESIGN" + ".md", "../" + "shared", "REFERENCE" + "-NOTES"]
TEXT_SUFFIXES = {".py", ".md", ".sh", ".toml", ".txt", ".cfg", ".ini", ".yml", ".yaml", ".json", ".cpp", ".h",
                 ".cu", ".cuh", ".rst"}
# a path into the repository: a top-level folder, then a file name with a document or source suffix
PATH_REF = re.compile(r"(?<![\w./-])((?:docs|bench|tests|scripts|examples|fastik)/[\w./-]*?\w\.(?:md|py|sh))(?![\w/])")
SECTION_REF = re.compile(r"docs/design\.md\s*§\s*(\d+)")


def repo_files() -> list[Path]:
    """Files git would commit: tracked ones plus untracked ones that are not ignored."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                             capture_output=True, check=True).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: cannot list the repository's files")
    files = [ROOT / p for p in out.split("\0") if p]
    return [f for f in files if f.suffix in TEXT_SUFFIXES and f.is_file()]


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def test_no_reference_outside_the_repository():
    bad = [f"{f.relative_to(ROOT)}:{i}: {line.strip()}"
           for f in repo_files() for i, line in enumerate(read(f).splitlines(), 1)
           if any(word in line for word in FORBIDDEN)]
    assert not bad, "references to design files outside the repository (point into docs/design.md):\n" + "\n".join(bad)


def test_referenced_paths_exist():
    missing = []
    for f in repo_files():
        for i, line in enumerate(read(f).splitlines(), 1):
            for ref in PATH_REF.findall(line):
                if not (ROOT / ref).exists():
                    missing.append(f"{f.relative_to(ROOT)}:{i}: {ref}")
    assert not missing, "references to files that do not exist:\n" + "\n".join(missing)


def test_design_sections_exist():
    sections = set(re.findall(r"^## (\d+)\.", read(ROOT / "docs" / "design.md"), flags=re.M))
    assert sections, "docs/design.md has no numbered '## N.' sections"
    missing = [f"{f.relative_to(ROOT)}:{i}: §{n}"
               for f in repo_files() for i, line in enumerate(read(f).splitlines(), 1)
               for n in SECTION_REF.findall(line) if n not in sections]
    assert not missing, f"references to sections docs/design.md lacks (it has §{', §'.join(sorted(sections))}):\n" + \
        "\n".join(missing)


def test_checks_can_fail():
    """The patterns find what they are meant to find."""
    missing = "docs/" + "missing.md"  # split so that this file does not match itself
    line = f"see {missing}, bench/NOTES.md and docs/design.md " + "§" + "12 (" + FORBIDDEN[0] + ")"
    assert PATH_REF.findall(line) == [missing, "bench/NOTES.md", "docs/design.md"]
    assert SECTION_REF.findall(line) == ["12"]
    assert any(word in line for word in FORBIDDEN)
    assert PATH_REF.findall("fastik/triton_kernels/message_{fwd,bwd}.py and my_docs/x.md") == []
