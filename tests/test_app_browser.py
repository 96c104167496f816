"""The exported folder's Gradio app (`app.py`, issue 19 item 5): its logic on a tiny export whose text features come
from all-MiniLM-L6-v2, and the app itself, launched by `python app.py` from the folder alone (the repository not
importable), driven in a real headless Chromium with Playwright: build a history by searching titles, read the
top recommendations, add a new item by title and see it ranked. Skipped, with the reason, where no browser is
installed (`.ci/run` installs Debian's chromium)."""

import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch
from speeder_fixtures import isolated_code, write_planted_dataset

from datasets_builder.features import compute_item_features
from hub_upload.export import APP_FILE, ITEM_ENCODERS_FILE, export_run
from modeling_speeder import SpeederForSequentialRec
from modeling_speeder.app_speeder import EncoderUnavailable, SpeederDemo, load_text_encoder, parse_args
from trainer.run import main as train

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the browser test is skipped, saying so
    expect = sync_playwright = None

NUM_ITEMS = 24
CHROMIUM = os.environ.get("SPEEDER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [  # Playwright adds --headless and --user-data-dir (a fresh profile per run)
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
HISTORY = ["item 1", "item 2", "item 3"]
NEW_TITLE = "item 3 special edition"
# `python app.py` in a fresh interpreter that cannot import the repository's packages (the folder alone).
LAUNCH = isolated_code("""
import runpy, sys
sys.argv = ["app.py"]
runpy.run_path("app.py", run_name="__main__")
""")


def browser_missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM}: apt-get install chromium chromium-driver (.ci/run does)"
    for module, package in (("playwright", "playwright"), ("gradio", "gradio")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed: pip install -e '.[dev,serving]' ({package})"
    return None


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A stage-1 (text) run on the planted data, its text features from all-MiniLM-L6-v2, exported."""
    root = tmp_path_factory.mktemp("app")
    data_dir = write_planted_dataset(root / "data", num_items=NUM_ITEMS, modalities=("id",))
    compute_item_features(data_dir, text_encoder="all-MiniLM-L6-v2", vision_encoder="none", id_encoder="none")
    train(["--data_dir", str(data_dir), "--output_dir", str(root / "run"), "--stages", "1",
           "--fusion_hidden_size", "32", "--fusion_intermediate_size", "64", "--max_history", "8",
           "--num_train_epochs", "1", "--max_train_samples", "16", "--ppt_per_sequence", "0.5",
           "--per_device_train_batch_size", "8", "--learning_rate", "5e-3", "--report_to", "none", "--bf16", "false",
           "--save_strategy", "no", "--eval_strategy", "no", "--eval_generate", "false", "--max_eval_samples", "8"])
    return export_run(root / "run", root / "export")


def test_export_writes_the_app_and_the_item_encoders(exported):
    assert (exported / APP_FILE).read_text() == (Path(__file__).parents[1] / "modeling_speeder" /
                                                 "app_speeder.py").read_text()
    encoders = json.loads((exported / ITEM_ENCODERS_FILE).read_text())
    assert encoders == {"text": {"encoder": "all-MiniLM-L6-v2", "kind": "sentence-transformers", "options": {},
                                 "dim": 384, "example": "item 0"}}


def test_app_searches_recommends_and_adds_items_by_title(exported):
    demo = SpeederDemo(exported)
    choices, count = demo.search("ITEM 1")
    assert count == 11 and choices[0] == ("item 1 [item1]", "item1")  # the exact title first, then item 10..19
    assert demo.search("  ") == ([], 0) and demo.search("nothing like it") == ([], 0)
    history = ["item1", "item2", "item3"]
    assert demo.recommend(history) == demo.model.recommend(history)
    new = demo.add_item(NEW_TITLE)
    assert new == "new-1" and demo.search("special") == ([(f"{NEW_TITLE} [new-1]", "new-1")], 1)
    # encoded as the data builder encoded the training items' texts: the same text gives the same embedding
    twin = demo.add_item("item 3 again", text="item 3", item_id="twin")
    cache = demo.model.item_cache
    assert torch.allclose(cache.embeddings[cache.rows["twin"]], cache.embeddings[cache.rows["item3"]], atol=1e-4)
    against = demo.rank_new_item(history, new, "item_cache")
    assert len(against) == 5 and new in [item_id for item_id, _ in against]
    _, recommendations, ranked, status = demo.views(history, "item_cache", new)
    assert "Top 5 of the 26 items" in recommendations and f"{NEW_TITLE} **(new)**" in ranked and status == ""
    with pytest.raises(ValueError, match="already in the item cache"):
        demo.add_item("again", item_id=twin)
    with pytest.raises(ValueError, match="Give the new item a title"):
        demo.add_item("   ")
    assert "**Error:** Unknown item ids ['gone']" in demo.views(["gone"], "item_cache", None)[3]


def test_app_says_which_text_encoder_it_needs(exported, tmp_path):
    with pytest.raises(EncoderUnavailable, match="does not say which text encoder .* 384-d features"):
        load_text_encoder(None, 384)
    with pytest.raises(EncoderUnavailable, match=r"encoded by '/no/such/encoder' .*failed to load"):
        load_text_encoder({"encoder": "/no/such/encoder", "kind": "sentence-transformers"}, 384)
    bare = tmp_path / "bare"  # a folder saved without the export's item_encoders.json
    SpeederForSequentialRec.from_pretrained(exported).save_pretrained(bare)
    (bare / ITEM_ENCODERS_FILE).unlink()
    with pytest.raises(EncoderUnavailable, match="no 'text' entry in item_encoders.json"):
        SpeederDemo(bare).add_item("a new film")


def test_app_port_and_address(monkeypatch):
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    assert (parse_args([]).port, parse_args([]).host) == (7999, "127.0.0.1")
    assert parse_args(["--port", "8123"]).port == 8123


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def app_url(exported):
    """`python app.py` in the exported folder, on a free local port; its URL once it serves."""
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("GRADIO_SERVER_NAME", None)
    process = subprocess.Popen([sys.executable, "-c", LAUNCH], cwd=exported, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    log = []
    threading.Thread(target=lambda: log.extend(process.stdout), daemon=True).start()
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("app.py did not serve:\n" + "".join(log)[-3000:])
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))
def test_app_in_a_headless_browser(exported, app_url):
    model = SpeederForSequentialRec.from_pretrained(exported)
    titles = [model.item_cache.titles[model.item_cache.rows[item_id]]
              for item_id, _ in model.recommend([title.replace(" ", "") for title in HISTORY])]
    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        browser = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS, timeout=60_000)
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(app_url)
            search = page.get_by_label("Search items by title")
            for title in HISTORY:
                search.fill(title)
                search.press("Enter")
                page.get_by_label(f"{title} [{title.replace(' ', '')}]").check()
                page.get_by_role("button", name="Add to history").click()
                expect(page.locator("#history")).to_contain_text(title)
            table = page.locator("#recommendations table")
            expect(table).to_be_visible()
            expect(page.locator("#recommendations")).to_contain_text(f"Top 5 of the {NUM_ITEMS} items")
            shown = [row.inner_text().split("\t")[1] for row in table.locator("tbody tr").all()]
            assert shown == titles  # Speeder's ranking, best first, as the model gives it

            page.get_by_role("button", name="Add new item").click()  # no title yet: the page says what is wrong
            expect(page.locator("#status")).to_contain_text("Give the new item a title")
            page.get_by_label("Title", exact=True).fill(NEW_TITLE)
            page.get_by_role("button", name="Add new item").click()
            expect(page.locator("#status")).to_contain_text(f"Added {NEW_TITLE} as item new-1")
            new_table = page.locator("#new-item table")
            expect(new_table).to_contain_text(f"{NEW_TITLE} (new)")
            expect(page.locator("#new-item")).to_contain_text("Speeder ranks it #")
            expect(page.locator("#recommendations")).to_contain_text(f"of the {NUM_ITEMS + 1} items")

            search.fill("special")  # the new item is in the catalogue: it can join the history
            search.press("Enter")
            page.get_by_label(f"{NEW_TITLE} [new-1]").check()
            page.get_by_role("button", name="Add to history").click()
            expect(page.locator("#history")).to_contain_text(NEW_TITLE)
            expect(table).to_be_visible()
        finally:
            browser.close()
