"""Questions asked relative to a day: their temporal intent, and a date prior on passages.

News questions often say when: "this week", "yesterday", "the latest", "currently" (recency),
or "in 2014", "in March 2022" (a period). A prior on the passages' dates helps such questions
and hurts the rest (Li and Croft 2003; Efron 2011), so it applies only when the question says so:

- **recent**: a relative expression or a word of recency. A passage loses fused score the older
  it is on the reference day (`as_of`, else today): half its weight every `QA_RECENCY_HALF_LIFE_DAYS`.
- **period**: an explicit year, or month and year, parsed by `dateparser`. A passage inside the
  period keeps its score; outside, it loses score with its distance from it, on the same scale:
  a soft window, since an article about 2014 is often dated early 2015.

Undated passages cannot show that they are recent or in the period: they lose the full weight
(`QA_RECENCY_WEIGHT`, in fused-score units; 0 switches the prior off). The weights are tuned on
RealTimeQA's training weeks (training/news_eval.py; figures in docs/evaluation.md).
"""

from __future__ import annotations

import datetime as dt
import re
from functools import cache

from qa.models import TemporalIntent

#: Words that ask for the newest state of things. The dates themselves ("yesterday", "last
#: month", "this week") are recognised by dateparser; these are not dates.
RECENCY_WORDS = ("latest", "currently", "current", "now", "recent", "recently", "newest", "so far", "still", "this week", "today")
_RECENCY = re.compile(r"\b(" + "|".join(re.escape(w) for w in RECENCY_WORDS) + r")\b", re.IGNORECASE)
#: A year a question may name ("in 2014"): four digits from 1800 to 2099.
_YEAR = re.compile(r"\b(1[89]\d\d|20\d\d)\b")
#: Relative expressions dateparser resolves against the reference day.
_RELATIVE = re.compile(r"\b(yesterday|tonight|last|past|this|ago)\b", re.IGNORECASE)


@cache
def _parser():
    from dateparser.date import DateDataParser

    return DateDataParser(languages=["en"], settings={"PREFER_DATES_FROM": "past", "RETURN_TIME_AS_PERIOD": True})


def _search(question: str, reference: dt.date) -> list[tuple[str, dt.datetime]]:
    from dateparser.search import search_dates

    settings = {"RELATIVE_BASE": dt.datetime.combine(reference, dt.time()), "PREFER_DATES_FROM": "past"}
    return search_dates(question, languages=["en"], settings=settings) or []


def temporal_intent(question: str, as_of: str | None = None, today: dt.date | None = None) -> TemporalIntent | None:
    """What the question says about time, relative to `as_of` (ISO day; default today), or None.

    dateparser is asked only when the question holds a year or a relative word: run on every
    question, it also reads "may" or "second" as dates, and takes 15 ms a question."""
    reference = dt.date.fromisoformat(as_of) if as_of else (today or dt.date.today())
    if _YEAR.search(question):
        for phrase, _ in _search(question, reference):
            if not _YEAR.search(phrase):
                continue
            found = _parsed(phrase)
            if found is None:
                continue
            (start, end), phrase = found
            return TemporalIntent(kind="period", reference=reference.isoformat(), phrase=phrase, start=start, end=end)
    cue = _RECENCY.search(question)
    if cue is None and _RELATIVE.search(question):
        found = [p for p, _ in _search(question, reference) if not _YEAR.search(p)]
        if found:
            return TemporalIntent(kind="recent", reference=reference.isoformat(), phrase=found[0].strip())
    if cue is not None:
        return TemporalIntent(kind="recent", reference=reference.isoformat(), phrase=cue.group(0))
    return None


def without_phrase(question: str, intent: TemporalIntent | None) -> str:
    """The question with the words that say when taken out ("Who was named mayor in 2014?" ->
    "Who was named mayor?"): an article's date is in its metadata, rarely in the passage that
    answers, so the reader, which reads only the passage, is asked the rest."""
    if intent is None:
        return question
    head, found, tail = question.partition(intent.phrase)
    if not found:
        return question
    rest = re.sub(r"\s+([?.!,;:])", r"\1", f"{head.rstrip()} {tail.lstrip()}").strip()
    return rest or question


def _parsed(phrase: str) -> tuple[tuple[str, str], str] | None:
    """The period a phrase of search_dates names, with the words around it that are not part of it
    ("in March 2022 in") dropped from its ends; None when no part of it parses."""
    words = phrase.split()
    for size in range(len(words), 0, -1):
        for first in range(len(words) - size + 1):
            part = " ".join(words[first : first + size])
            if not _YEAR.search(part):
                continue
            data = _parser().get_date_data(part)
            if data.date_obj is not None:
                return _period(data.date_obj.date(), data.period), part
    return None


def _period(day: dt.date, period: str | None) -> tuple[str, str]:
    """The first and last day of the year, month or day that dateparser found."""
    if period == "year":
        return dt.date(day.year, 1, 1).isoformat(), dt.date(day.year, 12, 31).isoformat()
    if period == "month":
        following = dt.date(day.year + day.month // 12, day.month % 12 + 1, 1)
        return dt.date(day.year, day.month, 1).isoformat(), (following - dt.timedelta(days=1)).isoformat()
    return day.isoformat(), day.isoformat()


def date_prior(intent: TemporalIntent, date: str | None, half_life_days: float) -> float:
    """How well a passage dated `date` fits the intent: 1 (now, or inside the period) down to 0
    (long before, far outside, or undated), halving every `half_life_days`."""
    if not date:
        return 0.0
    try:
        day = dt.date.fromisoformat(date[:10])
    except ValueError:
        return 0.0
    if intent.kind == "recent":
        distance = (dt.date.fromisoformat(intent.reference) - day).days
    else:
        start, end = dt.date.fromisoformat(intent.start), dt.date.fromisoformat(intent.end)
        distance = (start - day).days if day < start else (day - end).days if day > end else 0
    return 0.5 ** (max(distance, 0) / half_life_days) if half_life_days > 0 else float(distance <= 0)
