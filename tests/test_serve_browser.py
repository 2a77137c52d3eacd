"""End to end in a real headless browser: Debian's chromium driven by selenium (chromium-driver).

The page is served by a real uvicorn server on loopback; the test opens it, uploads a real
HAM10000 image through the file input, and reads the top class and the probability bars from the
page, which must equal what the predictor says for that file. Skipped only when chromium /
chromedriver / selenium are missing on a developer machine; under CI (``CI=true``, where
``.ci/run`` installs them) their absence fails the test instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest

import dermkit
from conftest import SHARED_DATA, make_dataset

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
try:
    import selenium  # noqa: F401

    HAVE_SELENIUM = True
except ImportError:
    HAVE_SELENIUM = False


def _require(condition: bool, reason: str) -> None:
    if condition:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: .ci/run installs chromium, chromium-driver and selenium)")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A tiny supervised model served by uvicorn on 127.0.0.1 in a thread; yields (url, model folder)."""
    import uvicorn

    from dermkit.serve import create_app

    root = tmp_path_factory.mktemp("browser")
    data = make_dataset(root, size=128)  # large enough for the image-quality gate
    dermkit.run({"method": "supervised", "data": str(data), "model": "timm:test_resnet@random", "image_size": 32,
                 "batch_size": 16, "num_workers": 0, "epochs": 1, "n_bootstrap": 20}, out=root / "run", progress=False)
    port = _free_port()
    app = create_app(root / "run" / "model")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}", root / "run" / "model", data
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def browser():
    _require(CHROMIUM is not None and DRIVER is not None, "chromium and chromedriver are not installed "
             "(apt-get install chromium chromium-driver)")
    _require(HAVE_SELENIUM, "selenium is not installed (pip install -e '.[test]')")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.mark.realdata
@pytest.mark.skipif(SHARED_DATA is None, reason="shared datasets not found (set DERMKIT_DATA)")
def test_page_uploads_a_real_image_and_shows_the_models_answer(server, browser):
    import pandas as pd
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    url, model_dir, _ = server
    rows = pd.read_csv(SHARED_DATA / "ham10000" / "metadata.csv")
    image = SHARED_DATA / "ham10000" / rows[(rows["split"] == "test") & (rows["diagnosis"] == "mel")]["image"].iloc[0]
    predictor = dermkit.load_predictor(model_dir)
    expected = predictor.predict_paths([image])[0]

    browser.get(url)
    wait = WebDriverWait(browser, 60)
    assert "not a medical device" in browser.find_element(By.ID, "notice").text
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#metrics tr[data-metric]"))  # the model card loaded
    assert "balanced accuracy" in browser.find_element(By.ID, "metrics").text

    browser.find_element(By.ID, "file").send_keys(str(image))
    wait.until(EC.text_to_be_present_in_element_attribute((By.ID, "status"), "data-state", "done"))

    # a dermoscopic photo is nothing like the coloured squares this model was trained on: the page says so
    # instead of presenting the bars as a diagnosis, and shows them one click further
    notice = browser.find_element(By.ID, "domain-notice")
    assert notice.is_displayed()
    assert "does not look like the images this model was trained on" in notice.text
    assert "not a diagnosis" in notice.text
    assert not browser.find_element(By.ID, "top-class").is_displayed()
    browser.find_element(By.CSS_SELECTOR, "#answer-anyway summary").click()
    wait.until(lambda d: d.find_element(By.ID, "top-class").is_displayed())
    top = browser.find_element(By.ID, "top-class").text
    assert top == predictor.classes[int(np.argmax(expected))]
    bars = browser.find_elements(By.CSS_SELECTOR, "#bars .bar")
    shown = {b.get_attribute("data-class"): float(b.get_attribute("data-probability")) for b in bars}
    assert set(shown) == set(predictor.classes)
    np.testing.assert_allclose([shown[c] for c in predictor.classes], expected, atol=1e-5)
    # the bars are drawn to scale and labelled with the percentage
    widths = {b.get_attribute("data-class"): b.find_element(By.CSS_SELECTOR, ".fill").size["width"] for b in bars}
    track = bars[0].find_element(By.CSS_SELECTOR, ".track").size["width"]
    for cls, p in shown.items():
        assert abs(widths[cls] - p * track) <= 2
    assert bars[0].find_element(By.CSS_SELECTOR, ".value").text == f"{100 * max(shown.values()):.1f}%"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#top3 li")) == 3
    # the heat map overlay came back and the toggle hides it
    wait.until(lambda d: d.find_element(By.ID, "heatmap").get_attribute("src").startswith("data:image/png;base64,"))
    heatmap = browser.find_element(By.ID, "heatmap")
    assert heatmap.is_displayed()
    browser.find_element(By.ID, "heatmap-toggle").click()
    assert not heatmap.is_displayed()


def test_page_shows_a_refused_upload_as_an_error(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    url, _, _ = server
    fake = tmp_path / "notes.jpg"
    fake.write_text("not an image at all")
    browser.get(url)
    browser.find_element(By.ID, "file").send_keys(str(fake))
    WebDriverWait(browser, 60).until(EC.text_to_be_present_in_element_attribute((By.ID, "status"), "data-state",
                                                                                "error"))
    assert "not an image" in browser.find_element(By.ID, "status").text


def test_an_image_like_the_training_images_is_answered_without_a_notice(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    url, model_dir, data = server
    card = dermkit.load_dataset(data)
    image = card.image_path(card.rows("test")["image"].iloc[0])
    predictor = dermkit.load_predictor(model_dir)
    assert predictor.ood.in_domain(predictor.image_features([image]), predictor.predict_paths([image]))[0]
    browser.get(url)
    browser.find_element(By.ID, "file").send_keys(str(image))
    WebDriverWait(browser, 60).until(EC.text_to_be_present_in_element_attribute((By.ID, "status"), "data-state",
                                                                                "done"))
    assert not browser.find_element(By.ID, "domain-notice").is_displayed()
    assert browser.find_element(By.ID, "top-class").is_displayed()
    assert "in domain" in browser.find_element(By.ID, "trust").text
    assert "image quality: ok" in browser.find_element(By.ID, "trust").text
