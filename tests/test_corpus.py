"""Reading articles in every supported format, and skipping what cannot be read."""

import json

from qa.corpus import read_corpus, read_file
from tests.conftest import SAMPLE, write_article


def test_sample_article_title_date_and_paragraphs(tmp_path):
    [doc] = read_file(SAMPLE)
    assert doc.title == "IBM enters into partnership with China’s Inspur Group Ltd"
    assert doc.date == "2014-08-23"
    assert doc.id == "ibm-inspur-partnership.txt"
    assert doc.text.startswith("International Business Machines Corp")
    assert "23 Aug 2014" not in doc.text


def test_markdown_without_date(tmp_path):
    p = tmp_path / "note.md"
    p.write_text("# A heading\n\nFirst paragraph here.\n\nSecond one.\n")
    [doc] = read_file(p)
    assert (doc.title, doc.date) == ("A heading", None)
    assert doc.text == "First paragraph here.\n\nSecond one."


def test_html_article_is_extracted_by_trafilatura(tmp_path):
    body = " ".join(["The council approved the new bridge over the river on Monday after a long debate."] * 3)
    html = f"""<html><head><title>Bridge approved</title>
    <meta property="article:published_time" content="2021-05-04"></head>
    <body><nav>Home | News | Sport</nav><article><h1>Bridge approved</h1><p>{body}</p>
    <p>Construction will start in June and cost 12 million pounds, officials said.</p></article>
    <footer>Copyright 2021</footer></body></html>"""
    (tmp_path / "bridge.html").write_text(html)
    [doc] = read_file(tmp_path / "bridge.html")
    assert doc.title == "Bridge approved"
    assert doc.date == "2021-05-04"
    assert "12 million pounds" in doc.text
    assert "Home | News" not in doc.text and "Copyright" not in doc.text


def test_json_and_jsonl_records(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"id": "x1", "title": "T", "text": "Body text.", "date": "2020/01/03", "source": "CNN"}))
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"text": "One."}) + "\n" + json.dumps({"id": "y2", "text": "Two.", "url": "http://e.com/2"}) + "\n"
    )
    report = read_corpus(tmp_path)
    docs = {d.id: d for d in report.documents}
    assert set(docs) == {"x1", "b.jsonl#0", "y2"}
    assert docs["x1"].date == "2020-01-03" and docs["x1"].source == "CNN"
    assert docs["y2"].url == "http://e.com/2"
    assert not report.skipped


def test_broken_files_are_reported_and_skipped(tmp_path):
    write_article(tmp_path, "good.txt", "Good article", "A paragraph that is long enough to be a passage.")
    (tmp_path / "broken.json").write_text('{"text": "unterminated')
    (tmp_path / "binary.txt").write_bytes(b"\x00\x01\x02\x03" * 100)
    (tmp_path / "empty.md").write_text("   \n\n")
    (tmp_path / "notes.pdf").write_bytes(b"%PDF-1.4")  # not an article format: ignored, not an error
    report = read_corpus(tmp_path)
    assert [d.id for d in report.documents] == ["good.txt"]
    reasons = {s.path: s.reason for s in report.skipped}
    assert set(reasons) == {"broken.json", "binary.txt", "empty.md"}
    assert "invalid JSON" in reasons["broken.json"]
    assert "binary" in reasons["binary.txt"]


def test_non_utf8_text_is_decoded_not_dropped(tmp_path):
    text = "Café owners in Zürich said the naïve plan would cost €5 million — too much.\n"
    (tmp_path / "latin.txt").write_bytes(("Crème brûlée tax\n\n" + text).encode("cp1252"))
    [doc] = read_corpus(tmp_path).documents
    assert doc.title == "Crème brûlée tax"
    assert "Zürich" in doc.text and "€5 million" in doc.text


def test_only_web_urls_are_kept(tmp_path):
    records = [
        {"id": "a", "text": "Body.", "url": "javascript:alert(1)"},
        {"id": "b", "text": "Body.", "url": "https://e.com/x"},
        {"id": "c", "text": "Body.", "url": "data:text/html,<script>1</script>"},
    ]
    (tmp_path / "r.json").write_text(json.dumps(records))
    urls = {d.id: d.url for d in read_corpus(tmp_path).documents}
    assert urls == {"a": None, "b": "https://e.com/x", "c": None}


def test_a_record_without_a_date_takes_the_full_day_in_its_url(tmp_path):
    records = [
        {"id": "slashes", "text": "a", "url": "https://www.cnn.com/2022/02/05/europe/queen/index.html"},
        {"id": "dashes", "text": "b", "url": "https://example.com/news/2022-02-06/harbour"},
        {"id": "compact", "text": "c", "url": "https://example.com/20220207/harbour.html"},
        {"id": "month-only", "text": "d", "url": "https://example.com/2022/02/harbour"},
        {"id": "no-such-day", "text": "e", "url": "https://example.com/2022/02/30/harbour"},
        {"id": "dated", "text": "f", "url": "https://example.com/2022/02/05/x", "date": "2022-02-04"},
        {"id": "query-only", "text": "g", "url": "https://example.com/harbour?d=2022/02/05"},
    ]
    (tmp_path / "news.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    dates = {d.id: d.date for d in read_file(tmp_path / "news.jsonl")}
    assert dates == {
        "slashes": "2022-02-05",
        "dashes": "2022-02-06",
        "compact": "2022-02-07",
        "month-only": None,  # a month is not a day: left undated
        "no-such-day": None,
        "dated": "2022-02-04",  # the record's own date comes first
        "query-only": None,
    }


def test_an_html_page_without_a_date_takes_the_one_in_its_canonical_url(tmp_path):
    # trafilatura's date search does not read this URL (it keeps to 1995 on); the page's own URL still dates it.
    body = " ".join(["The council approved the new bridge over the river on Monday after a long debate."] * 3)
    html = f"""<html><head><title>Bridge approved</title>
    <link rel="canonical" href="https://news.example.com/1993/05/17/bridge-approved/"></head>
    <body><article><h1>Bridge approved</h1><p>{body}</p></article></body></html>"""
    (tmp_path / "bridge.html").write_text(html)
    [doc] = read_file(tmp_path / "bridge.html")
    assert doc.url == "https://news.example.com/1993/05/17/bridge-approved/" and doc.date == "1993-05-17"
