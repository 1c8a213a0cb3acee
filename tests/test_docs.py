"""The documentation: the generated references are up to date, every shipped config passes
``s3stream config check``, ``config/full.toml`` names every setting, the README's links lead to real
pages, no user-facing text names a source document, and the MkDocs site builds without a warning."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import cli_command
from tests.test_cli import child_env

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
CONFIGS = sorted((ROOT / "config").glob("*.toml"))
TIMEOUT = 300


def load_script(name: str) -> ModuleType:
    """A module of ``scripts/`` (not a package), imported by its path."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    return importlib.import_module(name)


def test_generated_files_are_up_to_date() -> None:
    """``scripts/gen_docs.py --check`` exits 0: the CLI and configuration references, config/full.toml
    and the benchmark report are what the code generates now (as CI checks)."""
    result = subprocess.run([sys.executable, str(SCRIPTS / "gen_docs.py"), "--check"], env=child_env(),
                            cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert result.returncode == 0, result.stderr


def test_check_names_each_stale_file_and_writing_fixes_it(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """``--check`` exits 1 naming a file whose content differs from what would be generated (and not
    one that matches), and changes nothing; writing rewrites it, after which the check passes."""
    gen = load_script("gen_docs")
    stale, fresh = tmp_path / "docs" / "stale.md", tmp_path / "fresh.md"
    stale.parent.mkdir()
    stale.write_text("old\n")
    fresh.write_text("same\n")
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    monkeypatch.setattr(gen, "targets", lambda: {stale: lambda: "new\n", fresh: lambda: "same\n"})
    assert gen.run(check=True) == 1
    err = capsys.readouterr().err
    assert "docs/stale.md" in err
    assert "fresh.md" not in err
    assert stale.read_text() == "old\n"
    assert gen.run(check=False) == 0
    assert stale.read_text() == "new\n"
    assert gen.run(check=True) == 0


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.name)
def test_every_shipped_config_passes_config_check(config: Path, tmp_path: Path) -> None:
    """``s3stream config check`` accepts every config/*.toml: its settings are valid and every handler
    its sources name opens and closes again (run in an empty folder, where a jsonl handler may write)."""
    result = subprocess.run(cli_command("config", "check", str(config)), env=child_env(), cwd=tmp_path,
                            capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{config}: ok")


def test_full_toml_names_every_setting() -> None:
    """config/full.toml has a header for every table of the settings and, under it, every setting of
    that table: set to its default, or commented out with an example when it is unset by default."""
    docgen = load_script("docgen_config")
    text = (ROOT / "config" / "full.toml").read_text(encoding="utf-8")
    rule = "# " + "-" * 98
    for table in docgen.tables():
        header = table.header.replace("NAME", docgen.HANDLER_EXAMPLE[0])
        match = re.search(rf"(?m)^(# )?{re.escape(header)}$", text)
        assert match, header
        section = text[match.end():].split(rule, 1)[0]
        for name in docgen.scalars(table.model):
            assert re.search(rf"(?m)^(# )?{name} = ", section), f"{header} {name}"


def test_every_setting_has_a_description() -> None:
    """Every field of every settings model has a description, since the references are made of them."""
    docgen = load_script("docgen_config")
    missing = [f"{table.header} {name}" for table in docgen.tables()
               for name, field in table.model.model_fields.items() if not field.description]
    assert missing == []


def test_readme_links_lead_to_pages_of_the_site() -> None:
    """Every ``docs/…`` link of the README is a page that exists, and every page of the site's nav is
    linked from the README but the home page (the README's own text) and the generated benchmark
    report (linked from the performance page)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = set(re.findall(r"\]\((docs/[^)#]+)", readme))
    assert links
    for link in links:
        assert (ROOT / link).is_file(), link
    nav = set(re.findall(r"^\s+- [^:]+: (\S+\.md)$", (ROOT / "mkdocs.yml").read_text(), re.M))
    assert {f"docs/{page}" for page in nav} - links == {"docs/index.md", "docs/reference/benchmarks.md"}


def test_user_facing_text_names_no_source_document() -> None:
    """The README, the docs, the example configs and the examples speak of what a user does (the AWS
    CLI walkthrough, the S3-to-SQS bridge, the snapshot follower), never of "seed 000" and the like."""
    files = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *CONFIGS, *(ROOT / "examples").iterdir()]
    offenders = [str(path.relative_to(ROOT)) for path in files
                 if path.is_file() and re.search(r"(?i)\bseed ?0\d\d|\bseed's\b",
                                                 path.read_text(encoding="utf-8"))]
    assert offenders == []


def test_site_builds_without_a_warning(tmp_path: Path) -> None:
    """``mkdocs build --strict`` succeeds: every page of the nav exists and none is left out, every link
    between pages and to an anchor resolves, and the generated pages render."""
    env = {**child_env(), "NO_MKDOCS_2_WARNING": "1"}
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert result.returncode == 0, result.stderr
    for page in ("index.html", "reference/cli/index.html", "reference/config/index.html",
                 "performance/index.html"):
        assert (site / page).is_file(), page
    assert (site / "assets" / "benchmarks.png").is_file()
    assert os.path.getsize(site / "reference" / "config" / "index.html") > 10_000
