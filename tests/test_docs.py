"""The docs the code cites ship with the repo: no citation of an outside design document, every cited
``docs/<name>.md`` exists, and every cited section (``docs/<name>.md "Section"``) is a heading there."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUFFIXES = {".py", ".yaml", ".yml", ".md", ".toml", ".txt", ".cfg"}
OUTSIDE = "DESIGN" + " §"  # split so this file does not cite it itself
DOC_REF = re.compile(r"docs/([A-Za-z0-9_.\-]+?\.md)")
SECTION_REF = re.compile(r'docs/([A-Za-z0-9_.\-]+?\.md) "([^"\n]+)"')


def _files():
    yield REPO / "README.md"
    for top in ("zss", "scripts", "configs", "tests", "docs"):
        for p in sorted((REPO / top).rglob("*")):
            if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts:
                yield p


def _headings(doc: Path) -> set[str]:
    return {m.group(1).strip() for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", doc.read_text(), flags=re.M)}


def test_no_citation_of_an_outside_design_document():
    hits = [
        f"{p.relative_to(REPO)}:{i}"
        for p in _files()
        for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE in line
    ]
    assert not hits, f"cite the shipped docs (docs/protocol.md, docs/architecture.md) instead: {hits}"


def test_every_cited_doc_and_section_exists():
    missing, no_section = set(), set()
    for p in _files():
        text = p.read_text(errors="replace")
        for name in DOC_REF.findall(text):
            if not (REPO / "docs" / name).is_file():
                missing.add(f"{p.relative_to(REPO)} -> docs/{name}")
        for name, section in SECTION_REF.findall(text):
            doc = REPO / "docs" / name
            # a heading may carry a parenthesised suffix: "PLM fusion" cites "### PLM fusion (`pl_kwargs.mode`)"
            if doc.is_file() and not any(h == section or h.startswith(section + " (") for h in _headings(doc)):
                no_section.add(f'{p.relative_to(REPO)} -> docs/{name} "{section}"')
    assert not missing, sorted(missing)
    assert not no_section, sorted(no_section)


def test_protocol_and_architecture_docs_ship():
    for name in ("protocol.md", "architecture.md"):
        assert (REPO / "docs" / name).is_file(), name
    assert {"Metrics", "Pipeline", "Benchmarks", "Settings", "Evaluation modes"} <= _headings(REPO / "docs/protocol.md")
    assert {"Teacher", "Student", "Method", "Trainer", "Distributed"} <= _headings(REPO / "docs/architecture.md")


CODE_REF = re.compile(r"`(zss(?:\.\w+)*):([A-Za-z_]\w*(?:\.\w+)*)`")


def _section(doc: Path, heading: str) -> str:
    text = doc.read_text()
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def test_every_name_in_the_paper_component_table_exists():
    import importlib

    table = _section(REPO / "docs/architecture.md", "Paper component -> code")
    refs = CODE_REF.findall(table)
    assert len(refs) >= 30, f"the table should cite module:function names, found {refs}"
    missing = []
    for module, attr in refs:
        try:
            obj = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as e:
            missing.append(f"{module}:{attr} ({type(e).__name__}: {e})")
    assert not missing, f'docs/architecture.md "Paper component -> code" cites names that do not exist: {missing}'
    components = {row.split("|")[1].strip() for row in table.splitlines() if row.startswith("| ") and "---" not in row}
    for paper in ("CLIP-ZSS", "Chimera-Seg", "CLIP-RC / ZegCLIP", "CLIP-ES", "metric", "trainer"):
        assert paper in components, f"no row for {paper} in the paper-component table"
