"""The shipped runbook corpus (markdown files in runbooks/) and a small keyword search over it.

Each runbook has a `# Title`, a `keywords:` line and the sections Symptoms, Evidence to check, Causes and
Fixes. Search scores BM25-like term matches, with keyword-line and title hits weighted above body text, so
an error string pasted from an event ("Back-off pulling image") finds its runbook.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

_WORD = re.compile(r"[a-z0-9][a-z0-9.\-]*[a-z0-9]|[a-z0-9]")


@dataclass(frozen=True)
class Runbook:
    id: str  # the file name without .md
    title: str
    keywords: tuple[str, ...]
    text: str

    def section(self, name: str) -> str:
        match = re.search(rf"^## {re.escape(name)}\n(.*?)(?=^## |\Z)", self.text, re.S | re.M)
        return match.group(1).strip() if match else ""

    @property
    def uri(self) -> str:
        return f"runbook://{self.id}"


def _terms(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@cache
def corpus() -> dict[str, Runbook]:
    books: dict[str, Runbook] = {}
    for entry in sorted(resources.files("ultraplane.mcp").joinpath("runbooks").iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".md"):
            continue
        text = entry.read_text(encoding="utf-8")
        title = text.splitlines()[0].lstrip("# ").strip()
        keywords_line = re.search(r"^keywords:(.*)$", text, re.M)
        keywords = tuple(k.strip() for k in keywords_line.group(1).split(",")) if keywords_line else ()
        books[entry.name[:-3]] = Runbook(entry.name[:-3], title, keywords, text)
    return books


def search(query: str, limit: int = 3) -> list[tuple[Runbook, float]]:
    """Runbooks ranked by relevance to `query` (only those matching at least one term)."""
    books = list(corpus().values())
    terms = set(_terms(query))
    if not terms:
        return []
    docs = [(b, _terms(b.text), set(_terms(" ".join(b.keywords))), set(_terms(b.title))) for b in books]
    avg_len = sum(len(d[1]) for d in docs) / len(docs)
    scored: list[tuple[Runbook, float]] = []
    for book, words, key_terms, title_terms in docs:
        score = 0.0
        for term in terms:
            freq = words.count(term)
            if not freq:
                continue
            having = sum(1 for d in docs if term in d[1])
            idf = math.log(1 + (len(docs) - having + 0.5) / (having + 0.5))
            score += idf * freq * 2.2 / (freq + 1.2 * (0.25 + 0.75 * len(words) / avg_len))
            score += idf * (2.0 if term in key_terms else 0.0) + idf * (1.5 if term in title_terms else 0.0)
        # a keyword phrase quoted whole in the query ("Back-off pulling image") is the strongest signal
        lowered = query.lower()
        score += sum(3.0 for k in book.keywords if len(k) > 6 and k.lower() in lowered)
        if score > 0:
            scored.append((book, round(score, 3)))
    scored.sort(key=lambda item: -item[1])
    return scored[:limit]
