"""The news evaluation at scale, in one command (`make eval-news`):

    python -m training.news_eval [--split tune|held-out] [--articles N] [--limit N] [--json OUT]

The corpus (../shared/data, never committed; built once into .cache/news-eval/, reused):
- the evidence passages of the RealTimeQA questions, each dated by its quiz date;
- all of news_2022 (4,886 pages, dated from their URLs where the URL holds a date: 4,655 do);
- all of bbc_news (2,225 articles, its 100 known copies included; undated).

The questions: RealTimeQA's extractive ones (the answer is in the evidence), each asked `as_of`
its quiz date, as a reader of that week would have asked it. Weeks before 2021/08 tune (the
retriever and reader trained on the weeks before 2021/07, training/retrieval.py); 2021/08 to
2021/12 are held out. The same run measures squad11_dev13, so that a news gain is not paid for
on SQuAD, and asks each news question again as of the week before its quiz (its evidence then
left out: the archive does not hold the story yet) for the abstention curve.

Each part can be switched off to see what it is worth: `--parts all,-as_of,-recency,-aggregate`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

from qa.config import Config
from qa.corpus import date_from_url
from qa.scoring import read_jsonl
from training.common import DATA, RTQA
from training.retrieval import RTQA_HELD_OUT_FROM

WORK = Path(__file__).resolve().parent.parent / ".cache" / "news-eval"
NEWS_2022 = ("news_2022/articles-00.jsonl", "news_2022/articles-01.jsonl")
BBC = "bbc_news/articles.jsonl"


def iso(quiz_date: str) -> str:
    """RealTimeQA's "2020/01/03" as "2020-01-03"."""
    return quiz_date.replace("/", "-")


def corpus(data: Path, articles: int | None = None) -> list[dict]:
    """The evaluation corpus as paragraph records (id, title, context, date, url, source), in a
    fixed order; `articles` keeps only the first N of news_2022 and of bbc_news (a quick run)."""
    dates = {q["id"]: iso(q["date"]) for q in read_jsonl(data / RTQA / "questions.jsonl")}
    records = [
        {
            "id": p["id"],
            "title": p["title"],
            "context": p["context"],
            "date": dates.get(p.get("question_id", "")),
            "url": p.get("url"),
            "source": "RealTimeQA evidence",
        }
        for p in read_jsonl(data / RTQA / "paragraphs.jsonl")
    ]
    for rel, source in [(r, "news_2022") for r in NEWS_2022] + [(BBC, "bbc_news")]:
        for taken, r in enumerate(read_jsonl(data / rel)):
            if articles is not None and taken >= articles:
                break
            records.append(
                {
                    "id": str(r["id"]),
                    "title": r.get("title") or "",
                    "context": r["text"],
                    "date": date_from_url(r.get("url")),
                    "url": r.get("url"),
                    "source": source,
                }
            )
    return records


def write_paragraphs(records: list[dict], articles: int | None, work: Path = WORK) -> Path:
    """The corpus as one paragraphs file (its digest keys the reused index, qa.evaluate.eval_config)."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / ("paragraphs.jsonl" if articles is None else f"paragraphs-{articles}.jsonl")
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path


def news_questions(data: Path, split: str) -> list[dict]:
    """RealTimeQA's extractive questions of a split, each with `as_of` its quiz date."""
    out = []
    for q in read_jsonl(data / RTQA / "questions.jsonl"):
        if not (q.get("answer_in_context") and q.get("context_id") and q.get("answers")):
            continue
        held_out = q["date"] >= RTQA_HELD_OUT_FROM
        if (split == "held-out") == held_out:
            out.append({**q, "as_of": iso(q["date"])})
    return out


def week_before(day: str) -> str:
    return (dt.date.fromisoformat(day) - dt.timedelta(days=7)).isoformat()


#: What each part switched off changes: a Config change, or asking without `as_of`.
PARTS = {
    "all": {},
    "-as_of": {"as_of": False},
    "-recency": {"recency_weight": 0.0},
    "-aggregate": {"aggregate": "off"},
}
THRESHOLDS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def ask_all(
    cfg: Config, embedder, questions: list[dict], as_of: bool = True, shift_days: int = 0, reader=None, pipeline=None
) -> list[dict]:
    """Each question asked (at answer threshold 0, so that any threshold can be applied after), with
    what scoring needs: its top answer's text and score, the evidence's rank, the latency."""
    from qa.models import Filters
    from qa.pipeline import Pipeline
    from qa.scoring import exact_match, f1_score

    if pipeline is None:
        pipeline = Pipeline(cfg.replace(answer_threshold=0.0), embedder, reader=reader)
        pipeline.ask("warm up")
    rows = []
    for q in questions:
        day = q.get("as_of") if as_of else None
        if day and shift_days:
            day = (dt.date.fromisoformat(day) - dt.timedelta(days=shift_days)).isoformat()
        started = time.perf_counter()
        result = pipeline.ask(q["question"], top_k=20, filters=Filters(as_of=day) if day else None)
        ms = (time.perf_counter() - started) * 1000
        ranked = [p.document_id for p in result.passages]
        top = result.answers[0] if result.answers else None
        gold = [a["text"] for a in q["answers"]]
        rows.append(
            {
                "id": q["id"],
                "ms": ms,
                "rank": ranked.index(q["context_id"]) + 1 if q["context_id"] in ranked else None,
                "text": top.text if top else "",
                "score": top.score if top else 0.0,
                "articles": top.articles if top else 0,
                "em": exact_match(top.text, gold) if top else 0.0,
                "f1": f1_score(top.text, gold) if top else 0.0,
                "temporal": result.temporal.kind if result.temporal else None,
                # Every answer, for fitting the merged answers' calibration (training.calibrate fit-merged).
                "answers": [
                    {"score": a.score, "support": a.support, "articles": a.articles, "f1": f1_score(a.text, gold)} for a in result.answers
                ],
            }
        )
    return rows


def summary(rows: list[dict], threshold: float) -> dict:
    """F1/EM (an answer below the threshold is withheld: 0), recall@1/@5, ECE of the top answer's
    score against its F1 (what the score is fitted to, training/calibrate.py), the share withheld, latency p50/p95."""
    import numpy as np

    n = len(rows)
    kept = [r for r in rows if r["score"] >= threshold and r["text"]]
    bins = np.minimum((np.array([r["score"] for r in kept]) * 10).astype(int), 9) if kept else np.array([])
    ece = 0.0
    for b in range(10):
        inside = [r for r, k in zip(kept, bins) if k == b]
        if inside:
            ece += len(inside) / len(kept) * abs(np.mean([r["score"] for r in inside]) - np.mean([r["f1"] for r in inside]))
    ms = [r["ms"] for r in rows]
    return {
        "questions": n,
        "f1": round(sum(r["f1"] for r in kept) / n, 4),
        "em": round(sum(r["em"] for r in kept) / n, 4),
        "recall@1": round(sum(r["rank"] == 1 for r in rows) / n, 4),
        "recall@5": round(sum(r["rank"] is not None and r["rank"] <= 5 for r in rows) / n, 4),
        "ece": round(float(ece), 4),
        "no_answer_rate": round(1 - len(kept) / n, 4),
        "temporal": sum(r["temporal"] is not None for r in rows),
        "ms_p50": round(float(np.percentile(ms, 50)), 1),
        "ms_p95": round(float(np.percentile(ms, 95)), 1),
    }


def abstention_curve(answerable: list[dict], missing: list[dict]) -> list[dict]:
    """Per threshold: F1 on the answerable questions (withheld answers score 0) and the share of
    questions whose evidence is left out that get no answer."""
    return [
        {
            "threshold": t,
            "answerable_f1": summary(answerable, t)["f1"],
            "withheld_without_evidence": round(sum(not (r["text"] and r["score"] >= t) for r in missing) / len(missing), 4),
        }
        for t in THRESHOLDS
    ]


def fit_merged(out: Path, cfg: Config, embedder, data: Path, work: Path, questions: list[dict], limit: int | None) -> dict:
    """Fits the merged answers' calibration (qa/readers/calibration.py) on every answer, at
    threshold 0, of the tune weeks' news questions and of the squad11_train calibration fold (never
    trained on), each answer labelled with its F1, as the occurrences' calibration is; writes it to
    `out`."""
    import numpy as np

    from qa.evaluate import build_eval_index, eval_config
    from qa.readers.calibration import FITTED_SETTINGS, MergedCalibration, fit, reliability
    from qa.readers.span import SpanReader
    from training.calibrate import fold_questions, write_set

    def unfitted(config: Config) -> SpanReader:
        reader = SpanReader(config)
        reader.merged_calibration = MergedCalibration()  # the scores as they are before this fit
        return reader

    rows = ask_all(cfg, embedder, questions, reader=unfitted(cfg))
    squad = fold_questions(data, limit or 1500)
    folder = work / "calibration_fold"  # reused across runs, as the news index is
    folder.mkdir(parents=True, exist_ok=True)
    squad_cfg = eval_config(Config.load(index=work / "index"), write_set(squad, folder))
    build_eval_index(squad_cfg, embedder, read_jsonl(folder / "paragraphs.jsonl"))
    rows += ask_all(squad_cfg, embedder, squad, reader=unfitted(squad_cfg))
    answers = [a for r in rows for a in r["answers"]]
    x = np.array([MergedCalibration.features(a["score"], a["support"], a["articles"]) for a in answers])
    y = np.array([a["f1"] for a in answers])
    weights, bias = fit(x, y)
    cal = MergedCalibration(
        weights,
        bias,
        f"RealTimeQA tune weeks ({len(questions)} q., as of their quiz dates) and {len(squad)} squad11_train calibration-fold q.: "
        f"{len(y)} answers, fitted to F1",
        {
            "answers": int(len(y)),
            "multi_article": int(sum(a["articles"] > 1 for a in answers)),
            # What the features depend on: the occurrences' fit and what is read, the date prior, aggregation.
            "settings": {k: getattr(cfg, k) for k in (*FITTED_SETTINGS, "recency_weight", "recency_half_life_days", "aggregate")},
        },
    )
    path = cal.save(out)
    _, before = reliability(np.array([a["score"] for a in answers]), y)
    _, after = reliability(np.array([cal.probability(a["score"], a["support"], a["articles"]) for a in answers]), y)
    return {"weights": weights, "bias": bias, "ece_before": before, "ece_after": after, "answers": len(y), "written": str(path)}


def sweep(cfg: Config, embedder, questions: list[dict], grid: str, threshold: float) -> None:
    """The date prior's settings of `grid` ("recency_weight=0,0.1;recency_half_life_days=7,30"), every
    combination, on one loaded index: a line of figures each. Only numbers the pipeline itself reads
    can be swept so; others need a run each (`--set`)."""
    import itertools

    from qa.pipeline import Pipeline

    axes = [(name, values.split(",")) for name, values in (part.split("=", 1) for part in grid.split(";"))]
    pipeline = Pipeline(cfg.replace(answer_threshold=0.0), embedder)
    pipeline.ask("warm up")
    for combo in itertools.product(*(values for _, values in axes)):
        change = {name: float(value) for (name, _), value in zip(axes, combo)}
        pipeline.config = cfg.replace(answer_threshold=0.0, **change)
        rows = ask_all(pipeline.config, embedder, questions, pipeline=pipeline)
        print(json.dumps({"settings": change, **summary(rows, threshold)}), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--work", type=Path, default=WORK, help="Where the corpus file and its index are kept between runs")
    parser.add_argument("--split", choices=("tune", "held-out"), default="held-out")
    parser.add_argument("--articles", type=int, help="Only the first N articles of news_2022 and of bbc_news (a quick run)")
    parser.add_argument("--limit", type=int, help="Ask only the first N questions of each set")
    parser.add_argument("--build-only", action="store_true", help="Build (or bring up to date) the index, and stop")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"Which of {', '.join(PARTS)} to run (comma-separated)")
    parser.add_argument("--no-squad", action="store_true", help="Skip squad11_dev13")
    parser.add_argument("--no-curve", action="store_true", help="Skip the abstention curve (a second pass of the questions)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="A setting for every run, e.g. recency_weight=0.2")
    parser.add_argument("--json", type=Path, help="Write the metrics here too")
    parser.add_argument(
        "--sweep", metavar="GRID", help='Date-prior settings swept on one loaded index: "recency_weight=0,0.1;recency_half_life_days=7,30"'
    )
    parser.add_argument(
        "--fit-merged", type=Path, metavar="DIR", help="Fit the merged answers' calibration on the tune weeks, write it to DIR"
    )
    args = parser.parse_args(argv)

    from qa.embedding import Embedder
    from qa.evaluate import build_eval_index, eval_config

    records = corpus(args.data, args.articles)
    paragraphs = write_paragraphs(records, args.articles, args.work)
    config = Config.load(index=args.work / "index", **dict(kv.split("=", 1) for kv in args.set))
    cfg = eval_config(config, paragraphs)
    print(f"corpus: {len(records):,} articles ({sum(r['date'] is not None for r in records):,} dated) -> {cfg.index}", file=sys.stderr)
    embedder = Embedder.from_config(cfg)
    build_eval_index(cfg, embedder, records)
    if args.build_only:
        return
    threshold = cfg.answer_threshold
    if args.fit_merged:
        tune = news_questions(args.data, "tune")[: args.limit]
        fitted = fit_merged(args.fit_merged, cfg, embedder, args.data, args.work, tune, args.limit)
        print(json.dumps(fitted, indent=2))
        return
    questions = news_questions(args.data, args.split)[: args.limit]
    if args.sweep:
        sweep(cfg, embedder, questions, args.sweep, threshold)
        return
    report: dict = {"split": args.split, "corpus_articles": len(records), "threshold": threshold, "settings": args.set, "news": {}}
    for part in args.parts.split(","):
        change = dict(PARTS[part])
        as_of = change.pop("as_of", True)
        rows = ask_all(cfg.replace(**change), embedder, questions, as_of=as_of)
        report["news"][part] = summary(rows, threshold)
        print(f"news {args.split} {part}: {report['news'][part]}", file=sys.stderr, flush=True)
        if part == "all" and not args.no_curve:
            missing = ask_all(cfg, embedder, questions, shift_days=7)
            report["abstention"] = abstention_curve(rows, missing)
    if not args.no_squad:
        squad_p, squad_q = args.data / "squad11_dev13" / "paragraphs.jsonl", args.data / "squad11_dev13" / "questions.jsonl"
        squad_cfg = eval_config(config, squad_p)
        build_eval_index(squad_cfg, embedder, read_jsonl(squad_p))
        squad = [q for q in read_jsonl(squad_q) if q.get("answers")][: args.limit]
        report["squad11_dev13"] = {}
        for part in ("all", "-aggregate"):
            rows = ask_all(squad_cfg.replace(**PARTS[part]), embedder, squad)
            report["squad11_dev13"][part] = summary(rows, threshold)
            print(f"squad11_dev13 {part}: {report['squad11_dev13'][part]}", file=sys.stderr, flush=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
