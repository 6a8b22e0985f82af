"""Lexical search on Milvus Lite: Milvus's BM25 function (with and without the files engine's stop
words) against the project's BM25 as sparse weights (what qa/index/milvus/ stores), each
against the files engine's BM25 (qa/index/lexical.py) over the same passages.

    .venv/bin/python bench/milvus_lexical.py --store INDEX/v000001/store.sqlite --db /tmp/lexical.db

INDEX is a files index (`qa index`, or bench/engines.py's WORKDIR/index-files). Prints search
latency and agreement with the files engine's top 20; docs/scale-out.md has the figures.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.corpora import questions  # noqa: E402
from bench.run import pct  # noqa: E402
from qa.index.lexical import STOP_WORDS, Analyzer, LexicalIndex, document_weights, idf  # noqa: E402
from qa.index.milvus.schema import term_id  # noqa: E402

STANDARD = {"tokenizer": "standard", "filter": ["lowercase", {"type": "stemmer", "language": "english"}]}
STOPPED = {
    "tokenizer": "standard",
    "filter": ["lowercase", "asciifolding", {"type": "stop", "stop_words": sorted(STOP_WORDS)}, {"type": "stemmer", "language": "english"}],
}


def main() -> None:
    from pymilvus import DataType, Function, FunctionType, MilvusClient

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True, help="a files index's store.sqlite")
    ap.add_argument("--db", required=True, help="a Milvus Lite file to write (its collections are replaced)")
    ap.add_argument("--questions", type=int, default=200)
    args = ap.parse_args()

    con = sqlite3.connect(f"file:{args.store}?mode=ro", uri=True)
    rows = con.execute("select p.id, d.title, p.text from passages p join documents d on d.id = p.document_id order by p.id").fetchall()
    analyzer = Analyzer()
    terms = [analyzer.passage_terms(title, text) for _, title, text in rows]
    average = float(np.mean([length for _, _, length in terms]))
    df: dict[int, int] = {}
    sparse = []
    for body, title, length in terms:
        weights: dict[int, float] = {}
        for term, w in document_weights(body, title, length, average).items():
            weights[term_id(term)] = weights.get(term_id(term), 0.0) + w
        for key in weights:
            df[key] = df.get(key, 0) + 1
        sparse.append(weights)
    files = LexicalIndex.empty(0.5)
    files.add(rows)

    c = MilvusClient(args.db)
    collections = {"function": STANDARD, "function+stop": STOPPED, "sparse": None}
    for name, analyzer_params in collections.items():
        table = name.replace("+", "_")
        if c.has_collection(table):
            c.drop_collection(table)
        schema = c.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        index = c.prepare_index_params()
        if analyzer_params:
            schema.add_field("lexical", DataType.VARCHAR, max_length=65535, enable_analyzer=True, analyzer_params=analyzer_params)
            schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
            schema.add_function(
                Function(name="bm25", function_type=FunctionType.BM25, input_field_names=["lexical"], output_field_names=["sparse"])
            )
            index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
            data = [{"id": pid, "lexical": f"{title}\n{text}"} for pid, title, text in rows]
        else:
            schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
            index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
            data = [{"id": pid, "sparse": w} for (pid, _, _), w in zip(rows, sparse) if w]
        c.create_collection(table, schema=schema, index_params=index)
        for k in range(0, len(data), 2000):
            c.insert(table, data[k : k + 2000])
        c.flush(table)

    def search(name: str, question: str) -> list[int]:
        table = name.replace("+", "_")
        if name == "sparse":
            q = {term_id(t): float(idf(len(rows), df[term_id(t)])) for t in analyzer.question_terms(question) if term_id(t) in df}
            if not q:
                return []
            hits = c.search(table, data=[q], anns_field="sparse", limit=20, output_fields=["id"], search_params={"metric_type": "IP"})[0]
        else:
            hits = c.search(
                table, data=[question], anns_field="sparse", limit=20, output_fields=["id"], search_params={"metric_type": "BM25"}
            )[0]
        return [int(h["id"]) for h in hits]

    qs = questions(args.questions)
    out: dict = {
        "passages": len(rows),
        "questions": len(qs),
        "terms_per_passage": round(float(np.mean([len(w) for w in sparse])), 1),
        "distinct_terms": len(df),
    }
    for name in collections:
        times, shared, first = [], [], []
        for repeat in range(2):  # the second pass is measured
            for q in qs:
                started = time.perf_counter()
                got = search(name, q)
                elapsed = (time.perf_counter() - started) * 1000
                if repeat:
                    ref = [pid for pid, _ in files.search(q, 20)]
                    times.append(elapsed)
                    shared.append(len(set(got) & set(ref)) / max(1, len(ref)))
                    first.append(got[:1] == ref[:1])
        out[name] = {
            "search_ms": pct(times),
            "top20_shared": round(float(np.mean(shared)), 3),
            "same_first": round(float(np.mean(first)), 3),
        }
        print(name, json.dumps(out[name]), flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
