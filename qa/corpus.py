"""Reading articles from `corpus/`: text, Markdown, HTML and JSON records become Documents.

A file that cannot be read is reported and skipped; it never stops the others.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from urllib.parse import urlsplit

from charset_normalizer import from_bytes
from dateutil import parser as dateparser

from qa.models import Document
from qa.progress import Progress

TEXT_SUFFIXES = {".txt", ".md"}
HTML_SUFFIXES = {".html", ".htm"}
JSON_SUFFIXES = {".json", ".jsonl"}
SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | JSON_SUFFIXES
#: Reading a folder of fewer files is quick: no progress for it.
PROGRESS_FROM_FILES = 100

# A line that is only a date: "23 Aug 2014", "August 23, 2014", "2014-08-23", "Sat 23 Aug 2014".
_DATE_LINE = re.compile(
    r"^\s*(?:[A-Za-z]{3,9},?\s+)?(?:\d{1,2}\s+[A-Za-z]{3,9}\.?,?\s+\d{4}|[A-Za-z]{3,9}\.?\s+\d{1,2},?\s+\d{4}"
    r"|\d{4}-\d{2}-\d{2}(?:[T ][\d:.+Z-]+)?|\d{1,2}/\d{1,2}/\d{4})\s*$"
)

# A full year-month-day in a URL's path: /2022/02/05/, /2022-02-05/, /20220205/ (a bare /2022/02/ is no day).
_URL_DATE = re.compile(r"(?:^|[/_-])(?:(\d{4})/(\d{1,2})/(\d{1,2})|(\d{4})-(\d{2})-(\d{2})|(\d{4})(\d{2})(\d{2}))(?=[/_.-]|$)")


class CorpusError(Exception):
    """A file that cannot be read as an article."""


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class CorpusReport:
    documents: list[Document]
    skipped: list[Skipped]


def read_corpus(root: Path, show_progress: bool = False) -> CorpusReport:
    """Every article under `root`, and the files that had to be skipped, with why. With
    `show_progress`, a large folder's reading is shown (`qa.progress`: a bar, or lines in a log)."""
    documents: list[Document] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    if not root.is_dir():
        return CorpusReport(documents, skipped)
    paths = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in SUFFIXES and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    with Progress(len(paths), "reading", "file", enabled=show_progress and len(paths) >= PROGRESS_FROM_FILES) as progress:
        for path in paths:
            _read_into(path, root, documents, skipped, seen)
            progress.update(1)
    return CorpusReport(documents, skipped)


def _read_into(path: Path, root: Path, documents: list[Document], skipped: list[Skipped], seen: set[str]) -> None:
    """One file's documents onto `documents`, or its reason onto `skipped`."""
    rel = path.relative_to(root).as_posix()
    try:
        found = read_file(path, rel)
        ids: set[str] = set()
        for doc in found:
            if doc.id in seen or doc.id in ids:
                raise CorpusError(f"duplicate document id {doc.id!r}")
            ids.add(doc.id)
    except CorpusError as exc:
        skipped.append(Skipped(rel, str(exc)))
        return
    seen.update(ids)
    documents.extend(found)


def read_file(path: Path, rel: str | None = None) -> list[Document]:
    """The documents in one file; raises CorpusError with a reason a person can act on."""
    rel = rel or path.name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CorpusError(f"cannot read: {exc.strerror or exc}") from exc
    return parse_bytes(data, rel)


def parse_bytes(data: bytes, rel: str) -> list[Document]:
    suffix = Path(rel).suffix.lower()
    if b"\x00" in data[:8192] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise CorpusError("binary content, not text")
    if suffix in HTML_SUFFIXES:
        docs = [_parse_html(data, rel)]
    elif suffix in JSON_SUFFIXES:
        docs = _parse_json(decode(data), rel, lines=suffix == ".jsonl")
    elif suffix in TEXT_SUFFIXES:
        docs = [_parse_text(decode(data), rel)]
    else:
        raise CorpusError(f"unsupported file type {suffix!r} (use one of {', '.join(sorted(SUFFIXES))})")
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise CorpusError("no article text found")
    return docs


def decode(data: bytes) -> str:
    """UTF-8 when it is; otherwise the most likely encoding, so that no article is dropped for it."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    matches = list(from_bytes(data))
    if matches:
        # Short texts fit many code pages equally well; among those, Windows-1252 is the likeliest for news.
        best = min(m.chaos for m in matches)
        near = [m for m in matches if m.chaos <= best + 0.01]
        chosen = next((m for m in near if m.encoding == "cp1252"), near[0])
        return str(chosen)
    return data.decode("cp1252", errors="replace")


def parse_date(value: object) -> str | None:
    """An ISO-8601 date when `value` reads as one, else None."""
    if value is None or value == "":
        return None
    if isinstance(value, (date, datetime)):
        return value.isoformat()[:10]
    try:
        parsed = dateparser.parse(str(value), default=datetime(1900, 1, 1))
    except (ValueError, OverflowError, TypeError):
        return None
    if parsed.year < 1800:
        return None
    return parsed.date().isoformat()


def date_from_url(url: object) -> str | None:
    """The ISO date in a news URL's path (`/2022/02/05/`, `/2022-02-05/`, `/20220205/`), when it names a real day."""
    if not url:
        return None
    try:
        path = urlsplit(str(url)).path
    except ValueError:
        return None
    for match in _URL_DATE.finditer(path):
        year, month, day = (int(g) for g in match.groups() if g is not None)
        if not 1800 <= year <= 2200:
            continue
        try:
            return date(year, month, day).isoformat()
        except ValueError:
            continue
    return None


def clean_url(value: object) -> str | None:
    """Only web links: a `javascript:` or `data:` url from an untrusted article must never become a link."""
    url = str(value).strip() if value else ""
    return url if re.match(r"https?://[^\s]+$", url, re.IGNORECASE) else None


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _parse_text(text: str, rel: str) -> Document:
    """First non-empty line is the title; a date line right after it is the date; the rest is the body."""
    text = _normalise_newlines(text)
    lines = text.split("\n")
    i = 0
    while i < len(lines) and not lines[i].strip():
        i += 1
    if i == len(lines):
        raise CorpusError("empty file")
    title = lines[i].strip().lstrip("#").strip()
    i += 1
    j = i
    while j < len(lines) and not lines[j].strip():
        j += 1
    when = None
    if j < len(lines) and _DATE_LINE.match(lines[j]):
        when = parse_date(lines[j].strip())
        if when:
            i = j + 1
    body = "\n".join(lines[i:]).strip()
    if not body:  # a one-paragraph file: the title line is all there is
        body = title
    return Document(id=rel, title=title, text=body, date=when, path=rel)


def _parse_html(data: bytes, rel: str) -> Document:
    import trafilatura

    try:
        result = trafilatura.bare_extraction(data, with_metadata=True, include_comments=False, include_tables=False)
    except Exception as exc:  # trafilatura raises many kinds on malformed markup
        raise CorpusError(f"cannot parse HTML: {exc}") from exc
    result = result.as_dict() if result is not None and hasattr(result, "as_dict") else result
    if not result or not (result.get("text") or "").strip():
        raise CorpusError("no article text found in HTML")
    paragraphs = [line.strip() for line in result["text"].split("\n") if line.strip()]
    title = (result.get("title") or "").strip() or Path(rel).stem
    url = clean_url(result.get("url"))
    return Document(
        id=rel,
        title=title,
        text="\n\n".join(paragraphs),
        date=parse_date(result.get("date")) or date_from_url(url),
        url=url,
        source=result.get("sitename") or result.get("hostname"),
        path=rel,
    )


def _parse_json(text: str, rel: str, lines: bool) -> list[Document]:
    records: list[object] = []
    if lines:
        for n, line in enumerate(text.split("\n"), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise CorpusError(f"line {n}: invalid JSON ({exc.msg})") from exc
                except RecursionError as exc:
                    raise CorpusError(f"line {n}: JSON nested too deeply") from exc
    else:
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"invalid JSON at line {exc.lineno}: {exc.msg}") from exc
        except RecursionError as exc:
            raise CorpusError("JSON nested too deeply") from exc
        records = loaded if isinstance(loaded, list) else [loaded]
    docs = []
    for n, record in enumerate(records):
        docs.append(_record_to_document(record, rel, n, single=len(records) == 1))
    return docs


def _record_to_document(record: object, rel: str, n: int, single: bool) -> Document:
    if not isinstance(record, dict):
        raise CorpusError(f"record {n}: expected an object with a 'text' field")
    body = record.get("text", record.get("context"))
    if not isinstance(body, str):
        raise CorpusError(f"record {n}: missing 'text'")
    rid = record.get("id")
    doc_id = str(rid) if rid not in (None, "") else (rel if single else f"{rel}#{n}")
    title = record.get("title")
    url = clean_url(record.get("url"))
    return Document(
        id=doc_id,
        title=str(title).strip() if title else doc_id,
        text=_normalise_newlines(body).strip(),
        date=parse_date(record.get("date")) or date_from_url(url),
        url=url,
        source=str(record["source"]) if record.get("source") else None,
        path=rel,
    )


def iter_paragraph_spans(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each blank-line separated paragraph, whitespace trimmed."""
    pos = 0
    for match in re.finditer(r"\n[ \t]*\n", text):
        yield from _trimmed(text, pos, match.start())
        pos = match.end()
    yield from _trimmed(text, pos, len(text))


def _trimmed(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if end > start:
        yield start, end
