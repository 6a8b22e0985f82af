"""Near-duplicate clusters of two news corpora, with the index's own code (qa/index/duplicates.py);
nothing is indexed.

    python -m bench.duplicates [--threshold 0.8] [--shingle 5] [--sample 50]

bbc_news: its `duplicate_of` field names 100 known exact copies, each of which must land in its
original's cluster. news_2022: the pairs found, and a sample of them printed for checking by hand.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from qa.index.duplicates import SHINGLE, cluster_counts, cluster_ids, signature, similar_pairs

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def read(paths: list[Path]) -> list[dict]:
    return [json.loads(line) for p in paths for line in p.open(encoding="utf-8") if line.strip()]


def signatures(articles: list[dict], shingle: int) -> dict[str, object]:
    return {a["id"]: signature(a.get("title") or "", a.get("text") or "", shingle) for a in articles}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--shingle", type=int, default=SHINGLE)
    ap.add_argument("--sample", type=int, default=50)
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()

    bbc = read([args.data / "bbc_news" / "articles.jsonl"])
    started = time.perf_counter()
    sigs = signatures(bbc, args.shingle)
    clusters = cluster_ids(sigs, args.threshold)
    seconds = time.perf_counter() - started
    known = [(a["id"], a["duplicate_of"]) for a in bbc if a.get("duplicate_of")]
    found = sum(1 for d, o in known if clusters[d] == clusters[o])
    copies, groups = cluster_counts(clusters.values())
    print(f"bbc_news: {len(bbc)} articles, {copies} copies in {groups} clusters ({seconds:.1f}s)")
    print(f"  known duplicates found: {found}/{len(known)}; copies beyond them: {copies - found}")
    missed = [(d, o, float((sigs[d] == sigs[o]).mean())) for d, o in known if clusters[d] != clusters[o]]
    for d, o, j in missed[:10]:
        print(f"  missed {d} (of {o}): estimated Jaccard {j:.2f}")
    extra = [(d, c) for d, c in clusters.items() if c != d and not any(x == d for x, _ in known)]
    by_id = {a["id"]: a for a in bbc}
    for d, c in extra[:20]:
        print(f"  beyond the known: {d} ~ {c} ({float((sigs[d] == sigs[c]).mean()):.2f}): {by_id[d]['title']!r} / {by_id[c]['title']!r}")

    news = read(sorted((args.data / "news_2022").glob("*.jsonl")))
    started = time.perf_counter()
    sigs = signatures(news, args.shingle)
    ids = sorted(sigs)
    import numpy as np

    pairs = similar_pairs(ids, np.vstack([sigs[i] for i in ids]), args.threshold)
    clusters = cluster_ids(sigs, args.threshold)
    seconds = time.perf_counter() - started
    copies, groups = cluster_counts(clusters.values())
    by_id = {a["id"]: a for a in news}
    same = [p for p in pairs if by_id[ids[p[0]]]["text"] == by_id[ids[p[1]]]["text"]]
    near = [p for p in pairs if p not in same]
    print(
        f"\nnews_2022: {len(news)} articles, {len(pairs)} pairs at >= {args.threshold} ({len(same)} of byte-identical texts, "
        f"{len(near)} near), {copies} copies in {groups} clusters ({seconds:.1f}s)"
    )
    texts: dict[str, int] = {}
    for i, _j, _ in same:
        texts[by_id[ids[i]]["text"]] = texts.get(by_id[ids[i]]["text"], 0) + 1
    for text, n in sorted(texts.items(), key=lambda t: -t[1])[:5]:
        print(f"  identical text in {n} pairs: {' '.join(text[:100].split())!r}")
    # The sample: every near pair first (they are what the threshold decides), then identical ones.
    rng = random.Random(0)
    sample = sorted(rng.sample(near, min(args.sample, len(near))))
    sample += sorted(rng.sample(same, min(args.sample - len(sample), len(same))))
    for i, j, x in sample:
        a, b = by_id[ids[i]], by_id[ids[j]]
        print(f"\n--- {x:.2f} {a['id']} | {b['id']}{' (identical text)' if a['text'] == b['text'] else ''}")
        for doc in (a, b):
            print(f"  [{doc.get('title', '')}] {' '.join((doc.get('text') or '')[:200].split())}")


if __name__ == "__main__":
    main()
