"""Splitting into passages by the model's tokenizer, with offsets back into the document."""

from qa.models import Document
from qa.passages import PassageSplitter


def splitter(embedder, max_tokens=None):
    return PassageSplitter(embedder.count_tokens, embedder.split_tokens, max_tokens or embedder.max_tokens, 6, 1)


def test_oversized_paragraph_is_split_into_overlapping_windows(embedder):
    sentences = [f"Sentence number {i} reports that the regional council spent {i * 7} million on roads." for i in range(60)]
    long_para = " ".join(sentences)
    text = "A short opening paragraph with enough words in it.\n\n" + long_para + "\n\nA closing paragraph that also has enough words."
    doc = Document(id="d", title="Roads", text=text)
    passages = splitter(embedder).split(doc)
    assert embedder.count_tokens(long_para) > embedder.max_tokens  # the premise
    windows = [p for p in passages if len(p.text) < len(long_para) and "Sentence number" in p.text]
    assert len(windows) >= 3
    for p in passages:
        assert doc.text[p.start : p.end] == p.text
        assert embedder.count_tokens(doc.title) + embedder.count_tokens(p.text) <= embedder.max_tokens
        for s in p.sentences:
            assert p.text[s.start : s.end].strip()
    # consecutive windows overlap by a sentence and together cover the paragraph
    for a, b in zip(windows, windows[1:]):
        assert b.start < a.end
    assert windows[0].start == text.index(long_para) and windows[-1].end == text.index(long_para) + len(long_para)
    # windows end at sentence boundaries
    assert all(p.text.endswith(".") for p in windows)


def test_one_endless_sentence_is_cut_by_tokens(embedder):
    text = "word " * 1000
    doc = Document(id="d", title="T", text=text.strip())
    passages = splitter(embedder).split(doc)
    assert len(passages) >= 4
    for p in passages:
        assert doc.text[p.start : p.end] == p.text
        assert embedder.count_tokens(p.text) <= embedder.max_tokens


def test_bylines_and_date_lines_are_not_passages(embedder):
    text = "Karen Gilchrist\n\nCNBC\n\nSingapore has been named the world's most expensive city for the fifth year.\n\nIt said so."
    passages = splitter(embedder).split(Document(id="d", title="Singapore", text=text))
    assert len(passages) == 1
    assert passages[0].text.startswith("Singapore has been named")
    assert passages[0].text.endswith("It said so.")  # a short closing sentence joins the passage before it
