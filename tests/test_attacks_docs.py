"""docs/security.md maps each threat to the tests that show it: every reference must
name a test that exists (and, for corpus cases, a corpus file that exists), so the
document cannot silently point at a renamed or deleted test."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "security.md"
REF = re.compile(r"`(test_[a-z0-9_]+\.py)::(test_[a-z0-9_]+)(\[[^\]]+\])?`")
PARAM = re.compile(r"`\[([a-z0-9.-]+)\]`")


def test_every_test_the_security_document_names_exists() -> None:
    text = DOC.read_text()
    refs = REF.findall(text)
    assert len(refs) >= 40, "the document should name the tests behind each threat"
    missing = []
    for file, test, _ in refs:
        path = ROOT / "tests" / file
        if not path.exists() or not re.search(rf"^(async )?def {test}\(", path.read_text(), re.M):
            missing.append(f"{file}::{test}")
    assert missing == [], missing


def test_every_corpus_case_the_security_document_names_exists() -> None:
    text = DOC.read_text()
    cases = [p[1:-1] for *_, p in REF.findall(text) if p] + PARAM.findall(text)
    assert cases
    corpus = ROOT / "tests" / "corpus"
    missing = [c for c in cases if not ((corpus / "yaml" / c).exists() or (corpus / "cli" / f"{c}.json").exists())]
    assert missing == [], missing
