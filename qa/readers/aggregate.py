"""One answer from many reports: spans that say the same thing, in any passages or articles, merged.

News repeats a fact in wire copies, follow-ups and updated versions. The span reader scores each
occurrence on its own; here the occurrences of one answer become one `Answer` that keeps every
passage behind it (`sources`), and counts the independent articles that support it (copies of one
story, by their near-duplicate cluster, count once).

Two spans are the same answer when their SQuAD-normalised text is the same ("Sudan" / "the Sudan")
or when one is the other with at most two capitalised words before or after it ("Rometty" /
"Ginni Rometty", "Krishna" / "Arvind Krishna"): a name with its first name or a title added.

The merged answer's text, offsets, sentence and document are its best occurrence's, its `date`
its newest source's, and its `score` stays that occurrence's calibrated probability. `support` is the noisy-OR of the best
probability in each independent article: the chance that at least one of them is right if they
were independent evidence. It is not calibrated; `QA_AGGREGATE=support` ranks by it.
"""

from __future__ import annotations

from collections.abc import Callable

from qa.models import Answer, AnswerSource
from qa.scoring import normalize_answer

#: How many capitalised words a name may gain and still be the same answer ("Ginni Rometty").
EXTRA_NAME_WORDS = 2


def _tokens(text: str) -> tuple[str, ...]:
    return tuple(normalize_answer(text).split())


def _name_words(text: str) -> int:
    """How many of the words of `text` start with a capital letter or a digit."""
    return sum(1 for w in text.split() if w[:1].isupper() or w[:1].isdigit())


def same_answer(a: str, b: str) -> bool:
    """Whether two answer texts name the same thing (see the module's docstring)."""
    ta, tb = _tokens(a), _tokens(b)
    if not ta or not tb:
        return False
    if ta == tb:
        return True
    short, long_, long_text = (ta, tb, b) if len(ta) < len(tb) else (tb, ta, a)
    extra = len(long_) - len(short)
    if extra > EXTRA_NAME_WORDS or _name_words(long_text) < len(long_):
        return False  # only names gain words: "the president" is not "president Biden"
    return long_[:len(short)] == short or long_[-len(short):] == short


def aggregate(answers: list[Answer], cluster_of: Callable[[str], str] = lambda doc_id: doc_id, by_support: bool = False) -> list[Answer]:
    """`answers` (best first, each with its calibrated `score`) merged into one per distinct answer,
    best first: by the best occurrence's score, or with `by_support` by `support`."""
    groups: list[list[Answer]] = []
    for answer in answers:
        for group in groups:
            if same_answer(group[0].text, answer.text):
                group.append(answer)
                break
        else:
            groups.append([answer])
    merged = [_merge(group, cluster_of) for group in groups]
    if by_support:
        merged.sort(key=lambda a: (-a.support, -a.score))
    return merged


def _merge(group: list[Answer], cluster_of: Callable[[str], str]) -> Answer:
    best = max(group, key=lambda a: a.score)
    per_article: dict[str, float] = {}
    for a in group:
        key = cluster_of(a.document_id)
        per_article[key] = max(per_article.get(key, 0.0), a.score)
    missed = 1.0
    for p in per_article.values():
        missed *= 1.0 - p
    sources = [
        AnswerSource(
            document_id=a.document_id,
            title=a.title,
            date=a.date,
            url=a.url,
            passage_id=a.passage_id,
            text=a.text,
            start=a.start,
            end=a.end,
            document_start=a.document_start,
            document_end=a.document_end,
            score=a.score,
        )
        for a in sorted(group, key=lambda a: -a.score)
    ]
    dates = [a.date for a in group if a.date]
    newest = max(dates) if dates else best.date
    return best.model_copy(update={"sources": sources, "articles": len(per_article), "support": round(1.0 - missed, 4), "date": newest})
