"""The terminal view of an answer: the answer highlighted in its sentence, then the passages."""

from __future__ import annotations

import textwrap

from qa.models import AskResult


def render_text(result: AskResult, color: bool = False) -> str:
    bold = (lambda s: f"\033[1;33m{s}\033[0m") if color else (lambda s: f"[{s}]")
    lines = [f"Q: {result.question}", ""]
    if result.no_answer:
        lines.append("No answer found in the indexed articles.")
    if result.timeline:
        lines += ["Over time: " + " · ".join(f"{t.date}: {t.text}" for t in result.timeline), ""]
    for n, a in enumerate(result.answers, 1):
        s = a.start - a.sentence_start
        e = a.end - a.sentence_start
        marked = a.sentence[:s] + bold(a.sentence[s:e]) + a.sentence[e:]
        lines.append(f"{n}. {a.text}")
        lines.append(textwrap.indent(textwrap.fill(marked, 100), "   "))
        also = f"  in {a.articles} articles" if a.articles > 1 else ""
        lines.append(f"   {a.title}" + (f" ({a.date})" if a.date else "") + f"  score {a.score:.2f}{also}")
        lines.append("")
    lines.append("Passages:")
    for p in result.passages:
        reread = "" if p.rerank is None else f", cross-encoder {p.rerank:.2f}"
        lines.append(f"- {p.title} [{p.document_id}] score {p.score:.2f}{reread}")
        lines.append(textwrap.indent(textwrap.shorten(p.text, 300), "  "))
    lines.append(f"({result.took_ms:.0f} ms)")
    return "\n".join(lines)
