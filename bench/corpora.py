"""The benchmark corpora: shared data sets copied into a temporary corpus folder in the project's format.

The shared data stay outside the repository; only a temp copy (jsonl records with id, title, text)
is indexed, so nothing here can end up committed.
"""

from __future__ import annotations

import json
from pathlib import Path

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
DATASETS = {
    "bbc_news": ["bbc_news/articles.jsonl"],
    "news_2022": ["news_2022/articles-00.jsonl", "news_2022/articles-01.jsonl"],
}
QUESTIONS = SHARED / "realtimeqa_2020_2021" / "questions.jsonl"


def articles(name: str, limit: int | None = None) -> list[dict]:
    """Records with id, title and text, in file order; `limit` takes the first N (a reproducible subset)."""
    out: list[dict] = []
    for rel in DATASETS[name]:
        with (SHARED / rel).open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    r = json.loads(line)
                    if r.get("duplicate_of"):
                        continue
                    out.append({"id": str(r["id"]), "title": r.get("title") or "", "text": r["text"]})
                    if limit and len(out) >= limit:
                        return out
    return out


def write_corpus(records: list[dict], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "articles.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def questions(limit: int) -> list[str]:
    """News questions (RealTimeQA), for load and latency: real wording, real lengths."""
    out = []
    with QUESTIONS.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                out.append(json.loads(line)["question"])
                if len(out) >= limit:
                    break
    return out
