"""The web page at / in a real browser: headless Chromium (Debian's chromium and
chromium-driver, which `scripts/install.sh --test` installs) driven by Selenium. It
chats (streamed, greedy, then stopped mid-answer) and reads the machine view's figures
against the JSON API. NUMALLM_SCREENSHOTS=DIR also saves a PNG of each view there
(docs/serve-chat.png and docs/serve-machine.png come from that)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from test_serve import KEY, Server

pytestmark = pytest.mark.model
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
PARALLEL = 2
WAIT_S = 120


@pytest.fixture(scope="module")
def server(smollm2: Path) -> Iterator[Server]:
    s = Server(smollm2, "--parallel", str(PARALLEL), "-c", "512", "--api-key", KEY)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"headless Chromium is missing ({', '.join(missing)}): run `bash scripts/install.sh --test`, "
                    "which installs Debian's chromium and chromium-driver", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,800"):
        options.add_argument(arg)
    # The driver given by path: Selenium must never download one.
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def _until(what: str, check: Callable[[], object], timeout: float = WAIT_S) -> object:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def _screenshot(driver: object, name: str) -> None:
    where = os.environ.get("NUMALLM_SCREENSHOTS")
    if where:
        driver.save_screenshot(str(Path(where) / name))


def test_the_page_chats_and_shows_the_machine(server: Server, browser: object) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    find = d.find_element
    d.get(server.url + "/")
    _until("the API key form", lambda: find(By.ID, "key-form").is_displayed())  # the server wants a key
    find(By.ID, "key").send_keys(KEY)
    find(By.CSS_SELECTOR, "#key-form button").click()
    _until("the model's name", lambda: find(By.ID, "model").text == "SmolLM2-135M-Instruct.Q4_1.gguf")

    settings = {"temperature": "0", "max_tokens": "40", "seed": "1"}
    for name, value in settings.items():
        find(By.ID, name).clear()
        find(By.ID, name).send_keys(value)
    # Every change of the answer's text while it streams, as the page shows it.
    d.execute_script("""window.seen = [];
        new MutationObserver(() => { const a = [...document.querySelectorAll('.message.assistant')].pop();
            if (a) window.seen.push([a.dataset.state, a.textContent.length]); })
          .observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});""")
    question = "What is the capital of France?"
    find(By.ID, "prompt").send_keys(question)
    find(By.ID, "send").click()
    answer = _until("the answer", lambda: d.find_elements(By.CSS_SELECTOR, ".message.assistant[data-state=done]"))[0]
    seen = d.execute_script("return window.seen")
    grew = sorted({n for state, n in seen if state == "streaming" and n > 0})
    assert len(grew) > 1, f"the answer did not appear piece by piece: {seen}"

    # The same request through the API: a greedy answer is the same text.
    page_defaults = {"top_k": 40, "top_p": 0.95, "min_p": 0.05, "repeat_penalty": 1.0}
    body = {"messages": [{"role": "user", "content": question}], "temperature": 0, "max_tokens": 40,
            "seed": 1, **page_defaults}
    status, reply = server.post("/v1/chat/completions", json.dumps(body).encode())
    assert status == 200, reply
    assert answer.get_attribute("textContent") == reply["choices"][0]["message"]["content"]
    assert answer.text
    _screenshot(d, "serve-chat.png")

    # Stop mid-answer: the page stops, and the server frees the slot.
    find(By.ID, "max_tokens").clear()
    find(By.ID, "max_tokens").send_keys("400")
    find(By.ID, "prompt").send_keys("Write a very long story about a dragon.")
    find(By.ID, "send").click()
    _until("the second answer to stream", lambda: [a for a in d.find_elements(
        By.CSS_SELECTOR, ".message.assistant[data-state=streaming]") if a.text])
    find(By.ID, "stop").click()
    _until("the stop", lambda: d.find_elements(By.CSS_SELECTOR, ".message.assistant[data-state=stopped]"))
    _until("the slot to be freed", lambda: server.metric("numallm_active_sequences") == 0, 30)

    # The machine view against the JSON API.
    find(By.ID, "tab-machine").click()
    _until("the machine view", lambda: find(By.ID, "view-machine").get_attribute("data-loaded") == "yes")
    topology = server.get("/v1/numallm/topology")[1]
    badges = {(int(b.find_element(By.XPATH, "..").get_attribute("data-cpu")), int(b.get_attribute("data-worker")))
              for b in d.find_elements(By.CSS_SELECTOR, ".pu .worker")}
    assert badges == {(w["cpu"], w["worker"]) for w in topology["workers"]}
    assert len(d.find_elements(By.CSS_SELECTOR, ".core")) == topology["cores"]
    assert len(d.find_elements(By.CSS_SELECTOR, ".package")) == topology["packages"]
    placement = server.get("/v1/numallm/placement")[1]
    for g in placement["groups"]:
        for n in placement["nodes"]:
            cell = find(By.CSS_SELECTOR, f"tr[data-group='{g['name']}'] td[data-node='{n['os_index']}']")
            assert int(cell.get_attribute("data-bytes")) == g["bytes_by_node"].get(str(n["os_index"]), 0), g
    metrics = {name: server.metric(name) for name in ("numallm_slots", "numallm_generated_tokens_total",
                                                      "numallm_time_to_first_token_seconds_count")}
    assert metrics["numallm_slots"] == PARALLEL
    shown = {"numallm_slots": "fig-slots", "numallm_generated_tokens_total": "fig-generated",
             "numallm_time_to_first_token_seconds_count": "fig-ttft-n"}
    for name, element in shown.items():  # the page polls /metrics every second; the server is idle now
        _until(f"{element} to show {name}", lambda: find(By.ID, element).text == f"{metrics[name]:g}", 10)
    assert find(By.ID, "fig-active").text == "0"
    assert find(By.ID, "fig-ttft").text.endswith(" ms")
    _screenshot(d, "serve-machine.png")
