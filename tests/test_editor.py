"""The web editor at ``/`` in a real headless browser: Debian's chromium, driven by selenium through Debian's
chromedriver (the W3C WebDriver protocol; the driver comes with the browser package, so the two always match
and nothing is downloaded). Against a server subprocess on tiny checkpoints: generate, open a picture, paint a
mask with synthesised pointer events and inpaint, drag a handle to grow the canvas and outpaint, fuse, and see
every image arrive in the gallery with its metadata.

Set ``KANDINSKY_EDITOR_SCREENSHOT=docs/editor.png`` to refresh the README's screenshot.
"""

import base64
import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw
from serving import Server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1000"]
SMALL = {"seed": 3, "steps": 2, "prior_steps": 2, "width": 64, "height": 64}
WAIT = 90  # seconds for one job, on a busy CPU


def _need_browser():
    """Skip without chromium where it is not installed; CI installs it (.ci/run), so there it must be."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.isfile(p)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (the test extra)")
    if missing:
        why = f"the editor test needs {', '.join(missing)}: apt-get install chromium chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture(scope="module")
def server(prior22, decoder22, inpaint22, tmp_path_factory):
    _need_browser()
    home = tmp_path_factory.getbasetemp() / "kandinsky-home"
    with Server("--prior", prior22, "--decoder", decoder22, "--inpaint-decoder", inpaint22,
                env={"KANDINSKY_HOME": str(home)}) as s:
        yield s


@pytest.fixture(scope="module")
def browser(server, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # a driver path: no download
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> str:
    """A 128x128 picture to open: sky, sun and hills."""
    image = Image.new("RGB", (128, 128))
    draw = ImageDraw.Draw(image)
    for y in range(128):
        draw.line([(0, y), (127, y)], fill=(70 + y, 120 + y // 2, 230 - y // 2))
    draw.ellipse([78, 18, 108, 48], fill=(250, 210, 90))
    draw.polygon([(0, 100), (40, 70), (80, 96), (128, 64), (128, 128), (0, 128)], fill=(60, 120, 60))
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    image.save(path)
    return str(path)


def _by_id(driver, name):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, name)


def _gallery(driver) -> list[dict]:
    """What the page shows in its gallery: each image's size, mode, seed and metadata."""
    return driver.execute_script(
        "return state.gallery.map((g) => ({b64: g.b64, seed: g.seed, mode: g.mode, metadata: g.metadata}));")


def _wait_for_images(driver, count: int, what: str) -> dict:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def done(d):
        if "failed" in _by_id(d, "message").text:
            raise AssertionError(_by_id(d, "message").text)
        return len(d.find_elements(By.CSS_SELECTOR, "#gallery img")) == count and not d.execute_script(
            "return state.busy;")

    WebDriverWait(driver, WAIT).until(done, f"{what} never reached the gallery")
    return _gallery(driver)[-1]


def _decoded(b64_or_data_url: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64_or_data_url.split(",")[-1])))


def _picture(entry) -> np.ndarray:
    return np.asarray(_decoded(entry["b64"]).convert("RGB"))


def _canvas(driver) -> np.ndarray:
    return np.asarray(_decoded(driver.execute_script("return pictureUrl();")).convert("RGB"))


def test_generate_inpaint_outpaint_and_fuse_in_a_browser(browser, server, scene, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    d = browser
    d.get(server.url + "/")
    WebDriverWait(d, 30).until(lambda d: _by_id(d, "message").text == "Ready.", "the page never became ready")
    assert "custom" in _by_id(d, "model").text
    options = _by_id(d, "set-sampler").find_elements(By.TAG_NAME, "option")
    samplers = [o.get_attribute("value") for o in options]
    assert {"euler_a", "ddpm"} <= set(samplers)

    # generate: a prompt and settings, progress from the queue while it runs
    d.execute_script("""window.sent = [];  // what the page asks the server
        const plain = window.fetch;
        window.fetch = (url, options) => {
            sent.push([url, options && options.body]);
            return plain(url, options);
        };""")
    _by_id(d, "prompt").send_keys("a lighthouse at dusk")
    for name, value in SMALL.items():
        field = _by_id(d, "set-" + name)
        field.clear()
        field.send_keys(str(value))
    _by_id(d, "generate").click()
    made = _wait_for_images(d, 1, "the generated image")
    assert made["mode"] == "generate" and made["seed"] == 3
    recorded = made["metadata"]["settings"]
    assert recorded["steps"] == 2 and recorded["prompt"] == "a lighthouse at dusk"
    assert _picture(made).shape == (64, 64, 3)
    asked = [url for url, _ in d.execute_script("return sent;")]
    assert "/kandinsky/v1/generate" in asked and "/sdapi/v1/progress" in asked  # polled while it ran
    assert _by_id(d, "progress").get_attribute("hidden") is not None  # and hidden after

    # open a picture, paint a mask over its middle with the mouse, inpaint through AUTOMATIC1111's img2img
    _by_id(d, "upload").send_keys(scene)
    WebDriverWait(d, 10).until(lambda d: d.execute_script("return state.width;") == 128)
    opened = _canvas(d)
    assert np.array_equal(opened, np.asarray(Image.open(scene).convert("RGB")))
    mask = _by_id(d, "mask")
    d.execute_script("arguments[0].value = '64';", _by_id(d, "brush"))  # screen pixels
    ActionChains(d).move_to_element_with_offset(mask, -60, -20).click_and_hold().move_by_offset(60, 0) \
        .move_by_offset(40, 30).release().perform()
    ActionChains(d).move_to_element_with_offset(mask, 150, 150).click_and_hold().move_by_offset(30, 0) \
        .release().perform()  # a stray stroke near the corner, rubbed out again
    _by_id(d, "erase").click()
    ActionChains(d).move_to_element_with_offset(mask, 150, 150).click_and_hold().move_by_offset(30, 0) \
        .release().perform()
    _by_id(d, "erase").click()
    repaint = np.asarray(_decoded(d.execute_script("return maskUrl();")).convert("L")) > 127
    assert 0.02 < repaint.mean() < 0.6, repaint.mean()  # a stroke, not nothing nor everything
    assert not repaint[100:, 100:].any()  # the stray stroke is gone
    _by_id(d, "inpaint").click()
    inpainted = _wait_for_images(d, 2, "the inpainted image")
    assert inpainted["metadata"]["mode"] == "inpaint"
    out = _picture(inpainted)
    assert out.shape == (128, 128, 3)
    keep = ~repaint
    assert np.array_equal(out[keep], opened[keep])  # pasted back outside the mask, exactly
    assert not np.array_equal(out[repaint], opened[repaint])

    # drag the right handle outwards, paint a little (for the screenshot), outpaint through the own endpoint
    scale = d.execute_script("return state.scale;")
    ActionChains(d).click_and_hold(d.find_element(By.CSS_SELECTOR, ".handle[data-side=right]")) \
        .move_by_offset(round(40 * scale), 0).release().perform()
    grow = d.execute_script("return state.grow;")
    assert grow["right"] == pytest.approx(40, abs=2) and grow["left"] == grow["top"] == grow["bottom"] == 0
    ActionChains(d).move_to_element_with_offset(mask, 10, 40).click_and_hold().move_by_offset(30, -10) \
        .release().perform()
    d.execute_script("window.scrollTo(0, 0);")
    shot = tmp_path / "editor.png"
    d.save_screenshot(str(shot))
    if os.environ.get("KANDINSKY_EDITOR_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["KANDINSKY_EDITOR_SCREENSHOT"])
    _by_id(d, "outpaint").click()
    grown = _wait_for_images(d, 3, "the outpainted image")
    assert grown["metadata"]["mode"] == "outpaint"
    out = _picture(grown)
    assert out.shape == (128, 192, 3)  # 128 + 40 grown right, rounded up to the 64 px grid
    assert np.array_equal(out[:, :128], _picture(inpainted)), "the original must stay"
    assert d.execute_script("return [state.width, state.height];") == [192, 128]  # loaded for more editing

    # fuse a text and the picture on the canvas, with weight sliders
    _by_id(d, "fuse-add-text").click()
    _by_id(d, "fuse-add-image").click()
    sliders = d.find_elements(By.CSS_SELECTOR, "#fuse-items input[type=range]")
    assert len(sliders) == 2
    d.execute_script("arguments[0].value = '0.25'; arguments[0].dispatchEvent(new Event('input'));",
                     sliders[0])
    _by_id(d, "fuse").click()
    fused = _wait_for_images(d, 4, "the fused image")
    assert fused["metadata"]["mode"] == "fuse"
    (body,) = [json.loads(b) for url, b in d.execute_script("return sent;") if url == "/kandinsky/v1/fuse"]
    (inpaint,) = [json.loads(b) for url, b in d.execute_script("return sent;") if url == "/sdapi/v1/img2img"]
    assert inpaint["mask"].startswith("data:image/png") and len(inpaint["init_images"]) == 1
    assert body["weights"] == [0.25, 0.5]
    assert body["items"][0] == "a lighthouse at dusk" and set(body["items"][1]) == {"image"}

    # the gallery: four thumbnails; the selected one shows its metadata and a download link
    thumbs = d.find_elements(By.CSS_SELECTOR, "#gallery img")
    modes = [t.get_attribute("alt").split(",")[0] for t in thumbs]
    assert modes == ["generate", "inpaint", "outpaint", "fuse"]
    thumbs[1].click()
    assert '"mode": "inpaint"' in _by_id(d, "meta").text
    link = _by_id(d, "download")
    assert link.get_attribute("download") == f"kandinsky-inpaint-{inpainted['seed']}.png"
    assert link.get_attribute("href") == "data:image/png;base64," + inpainted["b64"]
    assert Image.open(shot).size[0] >= 1000
