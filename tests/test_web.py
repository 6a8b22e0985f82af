"""The web form in a real browser: headless Chromium (Playwright) against the app served by uvicorn."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote_plus

import pytest

from qa.index import build_index
from qa.service import create_app
from tests.conftest import HARBOUR_QUESTION, IBM_QUESTION, SAMPLE, ThreadServer, write_article, write_harbour_reports

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SAMPLE_TITLE = "IBM enters into partnership with China’s Inspur Group Ltd"

SCRIPT = "<script>window.__xss=1</script>"
IMG = '<img src=x onerror="window.__xss=2">'
REFLECTED = '"><img src=x onerror="window.__xss=3"><script>window.__xss=4</script>'


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    with ThreadServer(app) as server:
        yield server.url


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def sample_site(sample_index, embedder) -> Iterator[str]:
    with serving(create_app(sample_index, embedder)) as base:
        yield base


@pytest.fixture
def page(browser):
    """A fresh page that records script errors and failed requests, which no test expects."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.problems = []

    def console(m) -> None:
        url = m.location.get("url") or ""
        if m.type == "error" and not url.endswith("/favicon.ico"):  # the app serves no favicon
            pg.problems.append(f"console: {m.text} {url}")

    pg.on("pageerror", lambda exc: pg.problems.append(f"page error: {exc}"))
    pg.on("console", console)
    pg.on("response", lambda r: r.status >= 400 and pg.problems.append(f"{r.status} {r.url}"))
    pg.on("dialog", lambda d: (pg.problems.append(f"dialog: {d.message}"), d.dismiss()))
    yield pg
    context.close()


def test_ask_shows_highlighted_answer(page, sample_site, tmp_path):
    page.goto(sample_site + "/")
    assert page.title() == "News QA"
    page.fill("#q", IBM_QUESTION)
    with page.expect_navigation():
        page.press("#q", "Enter")
    page.wait_for_selector(".answers mark")

    article = SAMPLE.read_text(encoding="utf-8")
    marks = page.locator(".answers mark").all_inner_texts()
    assert marks and "lure away customers" in marks[0]
    assert all(m.strip() and m in article for m in marks), marks  # verbatim spans of the article
    first = page.locator(".answer").first
    assert SAMPLE_TITLE in first.locator(".meta").inner_text()
    assert first.locator(".sentence").inner_text() in article
    assert page.input_value("#q") == IBM_QUESTION  # the question stays in the box
    assert page.title() == f"{IBM_QUESTION} · News QA"
    assert page.locator(".passages details[open]").count() == 1
    # The top answer's words are marked where they stand in its passage, and only there.
    assert [m.text_content() for m in page.locator(".passages mark").all()] == [marks[0]]
    # The stylesheet is applied: the highlight is coloured.
    assert page.eval_on_selector(".answers mark", "m => getComputedStyle(m).backgroundColor") == "rgb(255, 229, 138)"

    shot = tmp_path / "ask.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert page.problems == []


def test_page_fits_a_phone(browser, sample_site, tmp_path):
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True)
    try:
        pg = context.new_page()
        for path in ("/", "/?q=" + quote_plus(IBM_QUESTION), "/add"):
            pg.goto(sample_site + path)
            width = pg.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"{path} scrolls sideways on a phone: {width}px wide"
        pg.goto(sample_site + "/?q=" + quote_plus(IBM_QUESTION))
        shot = tmp_path / "ask-phone.png"
        pg.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
    finally:
        context.close()


def test_article_and_question_html_is_shown_as_text(page, config, embedder):
    write_article(
        config.corpus,
        "brindlemoor.txt",
        f"Brindlemoor ferry {SCRIPT} returns {IMG}",
        f"The Brindlemoor ferry {SCRIPT} returned to service on Friday {IMG} after the canal was dredged.",
        "Passengers said the crossing to Oxhaven now takes eleven minutes instead of forty.",
        date="3 Mar 2021",
    )
    build_index(config, embedder)
    with serving(create_app(config, embedder)) as base:
        # The front page lists example questions made from the titles.
        page.goto(base + "/")
        assert SCRIPT in page.locator(".examples").inner_text()

        page.fill("#q", "When did the Brindlemoor ferry return to service?")
        with page.expect_navigation():
            page.click("form.ask button")
        page.wait_for_selector(".answers")
        answers = page.locator(".answers").inner_text()
        passages = page.locator(".passages").inner_text()
        assert page.locator(".answers mark").count() >= 1
        for payload in (SCRIPT, IMG):
            assert payload in answers  # the sentence and the title, as text
            assert payload in passages
        # The question is echoed into the title and the input: try to break out of both.
        page.goto(base + "/?q=" + quote_plus(REFLECTED))
        assert page.input_value("#q") == REFLECTED
        assert page.title() == f"{REFLECTED} · News QA"

        assert page.evaluate("typeof window.__xss") == "undefined"
        assert page.locator("main script, main img").count() == 0
        # Broken images (src=x) would show up as 404s here.
        assert page.problems == []


def test_article_url_cannot_run_script(page, config, embedder):
    record = {
        "id": "zebrafield",
        "title": "Zebrafield dam opens",
        "url": "javascript:window.__xss=5",
        "text": "The Zebrafield dam opened on Tuesday after nine years of building.",
    }
    (config.corpus / "zebrafield.json").write_text(json.dumps(record), encoding="utf-8")
    build_index(config, embedder)
    with serving(create_app(config, embedder)) as base:
        page.goto(base + "/?q=" + quote_plus("When did the Zebrafield dam open?"))
        assert "Zebrafield dam opens" in page.locator(".answers").inner_text()
        links = page.locator(".answer .meta a[href]")
        if links.count():
            links.first.click(no_wait_after=True)
            page.wait_for_timeout(200)
        assert page.evaluate("typeof window.__xss") == "undefined"
        scripted = page.eval_on_selector_all("main a[href]", "as => as.filter(a => a.protocol === 'javascript:').length")
        assert scripted == 0


def test_an_answer_from_several_articles_says_in_how_many_with_links(page, config, embedder, tmp_path):
    write_harbour_reports(config.corpus)
    build_index(config, embedder)
    with serving(create_app(config, embedder)) as base:
        page.goto(base + "/?q=" + quote_plus(HARBOUR_QUESTION))
        first = page.locator(".answer").first
        assert "Brenning" in first.locator("mark").inner_text()
        assert first.locator(".sources summary").inner_text() == "in 3 articles"
        first.locator(".sources summary").click()
        links = first.locator(".sources a")
        assert links.count() == 3
        hrefs = {links.nth(i).get_attribute("href") for i in range(3)}
        assert hrefs == {f"/api/documents/{n}.txt" for n in ("wire", "daily", "weekly")}
        page.goto(base + sorted(hrefs)[0])  # the link opens the article
        assert "Alva Brenning" in page.content()
    page.screenshot(path=str(tmp_path / "sources.png"), full_page=True)
    assert page.problems == []
