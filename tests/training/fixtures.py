"""A tiny ../shared/data for the training tests: two made-up SQuAD articles with their questions,
and three RealTimeQA news questions, one in each of the retriever's folds (train, fusion, held out)."""

from __future__ import annotations

import json
from pathlib import Path

ARTICLES = {
    "Harbour_of_Quillport": [
        "The harbour of Quillport opened in 1887. It was rebuilt after the storm of 1953. "
        "Its first master was Edith Varley. Ships from Pelham unload timber there every spring.",
        "In 1990 the harbour handled 4,200 ships. Trade fell after the bridge to Ostwick opened in 1998.",
    ],
    "Kites_of_Harlow": [
        "Harlow counted 212 red kites in 2019 and 340 in 2021. The survey is led by Tomas Brenner.",
        "Red kites nest in the beech woods north of Harlow. Brenner's team rings the chicks in June.",
    ],
}
QUESTIONS = [  # (title, paragraph, question, answer)
    ("Harbour_of_Quillport", 0, "When did the harbour of Quillport open?", "1887"),
    ("Harbour_of_Quillport", 0, "Who was the first master of the harbour?", "Edith Varley"),
    ("Harbour_of_Quillport", 1, "How many ships did the harbour handle in 1990?", "4,200"),
    ("Harbour_of_Quillport", 1, "When did the bridge to Ostwick open?", "1998"),
    ("Kites_of_Harlow", 0, "How many red kites did Harlow count in 2019?", "212"),
    ("Kites_of_Harlow", 0, "Who leads the survey in Harlow?", "Tomas Brenner"),
    ("Kites_of_Harlow", 1, "Where do red kites nest near Harlow?", "in the beech woods north of Harlow"),
    ("Kites_of_Harlow", 1, "When does Brenner's team ring the chicks?", "June"),
]
NEWS = [  # (date, evidence, question, answer)
    (
        "2020/03/06",
        "The ferry to Ostwick was cancelled for a week after the pier collapsed.",
        "Why was the ferry to Ostwick cancelled?",
        "the pier collapsed",
    ),
    (
        "2021/07/09",
        "Quillport's council voted to rename the harbour road after Edith Varley.",
        "Who is Quillport's harbour road named after?",
        "Edith Varley",
    ),
    ("2021/09/03", "A storm flooded the beech woods north of Harlow.", "What did the storm flood?", "the beech woods north of Harlow"),
]


def write_data(root: Path) -> Path:
    """`root` made a data folder as ../shared/data is laid out: squad11_train (ARTICLES and
    QUESTIONS) and realtimeqa_2020_2021 (NEWS, and a question without an evidence paragraph). The
    news questions have no `answer_in_context`, so the reader's recipe leaves them out."""
    squad, rtqa = root / "squad11_train", root / "realtimeqa_2020_2021"
    squad.mkdir(parents=True)
    rtqa.mkdir()
    paragraphs, questions = [], []
    for a, (title, texts) in enumerate(ARTICLES.items()):
        paragraphs += [{"id": f"t-{a}-{p}", "title": title, "context": text} for p, text in enumerate(texts)]
    for k, (title, p, question, answer) in enumerate(QUESTIONS):
        a, context = list(ARTICLES).index(title), ARTICLES[title][p]
        answers = [{"text": answer, "answer_start": context.index(answer)}]
        questions.append({"id": f"t-{a}-{p}-q{k}", "question": question, "context_id": f"t-{a}-{p}", "answers": answers})
    (squad / "paragraphs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in paragraphs))
    (squad / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in questions))
    news_p, news_q = [], []
    for k, (date, evidence, question, answer) in enumerate(NEWS):
        qid = date.replace("/", "") + f"_{k}"
        news_p.append({"id": f"rtqa-ev-{qid}", "title": f"news quiz {date}", "context": evidence, "question_id": qid})
        answers = [{"text": answer, "answer_start": evidence.index(answer)}]
        news_q.append({"id": qid, "question": question, "answers": answers, "context_id": f"rtqa-ev-{qid}", "date": date})
    news_q.append({"id": "20200306_9", "question": "Which city hosted the fair?", "answers": [], "context_id": None, "date": "2020/03/06"})
    (rtqa / "paragraphs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in news_p))
    (rtqa / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in news_q))
    return root
