"""demo.py in a real browser: Debian's headless Chromium, driven by Selenium through Debian's chromedriver, uploads
a clip, types a query, clicks the button and waits for the overlay video, which must play and hold every frame.

Needs the packages chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver); without them the test
skips, unless MTTR_REQUIRE_BROWSER=1 (set by .ci/run, which installs them) makes that a failure.

The README's screenshot, docs/demo.png, is the one of the synthetic examples' test, written there with
MTTR_UPDATE_DEMO_SCREENSHOT=1; MTTR_DEMO_CHECKPOINT=runs/<run>/checkpoints/best.pth.tar (a checkpoint of
configs/synthetic.yaml, e.g. the quick start's) replaces the random weights of that test by trained ones.
"""
import os
import shutil
import time
import urllib.request
from pathlib import Path
from unittest import mock

import av
import pytest
import torch

import demo
from config import load_config
from datasets.synthetic import write_text_encoder
from models import build_network
from tests.helpers import (DEMO_NUM_FRAMES as NUM_FRAMES, DEMO_QUERIES as QUERIES, REPO, SYNTHETIC_CONFIG,
                           inference_config, read_mp4, start_server)
from utils import save_checkpoint

CHROMIUM, CHROMEDRIVER = Path('/usr/bin/chromium'), Path('/usr/bin/chromedriver')
# as the machine's own check started it: no sandbox as root, and no calls to Google's services
CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                  '--disable-background-networking', '--disable-component-update', '--disable-sync',
                  '--disable-dev-shm-usage', '--window-size=1400,1000', '--autoplay-policy=no-user-gesture-required']

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings('ignore::DeprecationWarning:gradio.*')]


def browser_or_skip():
    missing = [f'{p} is missing (apt-get install chromium chromium-driver)' for p in (CHROMIUM, CHROMEDRIVER)
               if not p.is_file()]
    if demo.MISSING_DEPENDENCY is not None:
        missing.append(f'{demo.MISSING_DEPENDENCY} (pip install -r requirements-demo.txt)')
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append('selenium is missing (pip install -r requirements-demo.txt)')
    if missing:
        reason = 'cannot test the page in a browser: ' + '; '.join(missing)
        if os.environ.get('MTTR_REQUIRE_BROWSER') == '1':
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture
def browser(tmp_path):
    browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS + [f'--user-data-dir={tmp_path / "chromium-profile"}']:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(tiny_demo, tmp_path):
    _, checkpoint, overrides, _ = tiny_demo
    work_dir = tmp_path / 'server'
    work_dir.mkdir()
    with mock.patch.dict(os.environ):
        app, url, _ = start_server(work_dir, checkpoint, overrides)
        try:
            yield url, work_dir
        finally:
            app.close()


@pytest.fixture
def synthetic_page(tmp_path):
    """The first run of the README: configs/synthetic.yaml with its example clips. The weights are random (seeded)
    unless MTTR_DEMO_CHECKPOINT names a trained checkpoint; the tokenizer is the synthetic dataset's, written
    here instead of generating the dataset."""
    text_encoder = write_text_encoder(tmp_path / 'text_encoder')
    overrides = [f'text_encoder_type={text_encoder}']
    checkpoint = os.environ.get('MTTR_DEMO_CHECKPOINT')
    if not checkpoint:
        torch.manual_seed(0)
        model = build_network(load_config(SYNTHETIC_CONFIG, overrides, running_mode='eval', device='cpu'))
        checkpoint = tmp_path / 'synthetic.pth.tar'
        save_checkpoint({'model_state_dict': model.state_dict()}, checkpoint)
    work_dir = tmp_path / 'server'
    with mock.patch.dict(os.environ):
        config = inference_config(SYNTHETIC_CONFIG, checkpoint, overrides)
        segmenter = demo.VideoSegmenter.from_checkpoint(config, checkpoint)
        examples = demo.write_example_clips(work_dir / 'examples')
        app = demo.build_app(segmenter, demo.Limits(), work_dir, 12, examples,
                             f'Model: `configs/synthetic.yaml` with `{Path(checkpoint).name}` on the CPU.')
        url = demo.launch_app(app, demo.Limits(), port=None)
        try:
            yield url, examples
        finally:
            app.close()


def run_in_browser(driver, url, video=None, query=None, example=None, timeout=300):
    """Open the page, upload `video` and type `query`, or click the row `example` of the examples; click Segment;
    returns (seconds from the click to the overlay video in the page, the overlay's <video> element)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait
    wait = WebDriverWait(driver, timeout)
    driver.get(url)
    if example is not None:
        rows = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#examples tr.tr-body')[example:])
        rows[0].find_elements(By.TAG_NAME, 'td')[1].click()
    else:
        upload = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, '#video-input input[type=file]')))
        upload.send_keys(str(video))
        driver.find_element(By.CSS_SELECTOR, '#queries textarea').send_keys(query)
    wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, '#video-input video')))  # uploaded and shown
    button = driver.find_element(By.CSS_SELECTOR, '#segment')
    clicked = time.monotonic()
    button.click()
    overlay = wait.until(lambda d: next(iter(d.find_elements(By.CSS_SELECTOR, '#overlay video[src]')), None))
    seconds = time.monotonic() - clicked
    return seconds, overlay


def wait_until_playing(driver, video_element, timeout=60):
    """The element's metadata (so the browser decodes the file), then its time moving (so it plays)."""
    driver.execute_script('arguments[0].muted = true; arguments[0].play();', video_element)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = driver.execute_script(
            'const v = arguments[0]; return [v.readyState, v.videoWidth, v.currentTime, v.error && v.error.code];',
            video_element)
        if state[3]:
            raise AssertionError(f'the browser cannot play the overlay video: MediaError code {state[3]}')
        if state[0] >= 2 and state[1] > 0 and state[2] > 0:
            return state
        time.sleep(0.1)
    raise AssertionError(f'the overlay video did not play within {timeout} s: readyState, width, time = {state}')


def save_screenshot(driver, path: Path):
    """The whole page, the window grown to its height."""
    for _ in range(3):  # the window's height includes the browser's frame: grow until the page fits
        missing = driver.execute_script('return document.documentElement.scrollHeight - window.innerHeight')
        if missing <= 0:
            break
        size = driver.get_window_size()
        driver.set_window_size(size['width'], min(size['height'] + missing, 3000))
    time.sleep(0.5)  # the re-layout
    driver.save_screenshot(str(path))


def test_the_page_segments_an_uploaded_clip_in_chromium(browser, page, tiny_demo, tmp_path):
    url, work_dir = page
    video = tiny_demo[3]
    seconds, overlay = run_in_browser(browser, url, video, QUERIES[0])
    wait_until_playing(browser, overlay)
    source = overlay.get_attribute('src')
    assert source.startswith(url.rstrip('/'))  # served by the demo, from its temporary folder
    downloaded = tmp_path / 'overlay.mp4'
    urllib.request.urlretrieve(source, downloaded)
    frames, _ = read_mp4(downloaded)
    assert frames.shape[0] == NUM_FRAMES
    from selenium.webdriver.common.by import By
    assert browser.find_element(By.CSS_SELECTOR, '#plot img').get_attribute('src')
    assert f'{NUM_FRAMES} frames of' in browser.find_element(By.CSS_SELECTOR, '#summary').text
    screenshot = tmp_path / 'demo.png'
    save_screenshot(browser, screenshot)
    assert screenshot.stat().st_size > 10_000
    print(f'click to result: {seconds:.1f} s; screenshot: {screenshot}')

    def session_files():
        return list((work_dir / 'sessions').rglob('*_overlay.mp4')) + list(work_dir.glob(f'*/{video.name}'))
    assert len(session_files()) == 2  # the result and the upload
    browser.get('about:blank')  # closing the page ends its session: its files are deleted
    deadline = time.monotonic() + 90  # Gradio 6.0 notices a closed page after a minute without heartbeats
    while session_files() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not session_files()


def test_an_avi_the_browser_cannot_play_gets_a_word_and_is_segmented(browser, page, tiny_demo, tmp_path):
    """MPEG-4 Part 2 in AVI: Chromium shows no preview of it, so the page says why; the overlay plays."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait
    frames, rate = read_mp4(tiny_demo[3])
    avi = tmp_path / 'clip.avi'
    with av.open(str(avi), 'w') as container:
        stream = container.add_stream('mpeg4', rate=round(rate))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], 'yuv420p'
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')))
        container.mux(stream.encode())
    url, _ = page
    wait = WebDriverWait(browser, 300)
    browser.get(url)
    wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, '#video-input input[type=file]'))).send_keys(
        str(avi))
    note = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, '#preview-note').text.strip() or None)
    assert note.startswith('Browsers cannot play this video (mpeg4 in AVI')
    browser.find_element(By.CSS_SELECTOR, '#queries textarea').send_keys(QUERIES[0])
    browser.find_element(By.CSS_SELECTOR, '#segment').click()
    overlay = wait.until(lambda d: next(iter(d.find_elements(By.CSS_SELECTOR, '#overlay video[src]')), None))
    wait_until_playing(browser, overlay)
    assert f'{len(frames)} frames of' in browser.find_element(By.CSS_SELECTOR, '#summary').text


def test_the_synthetic_examples_are_ready_to_click(browser, synthetic_page, tmp_path):
    """The README's first run: click an example (its clip and its referring expressions fill the inputs), click
    Segment; the overlay shows every frame. Its screenshot is the README's (MTTR_UPDATE_DEMO_SCREENSHOT=1)."""
    from selenium.webdriver.common.by import By
    url, examples = synthetic_page
    seconds, overlay = run_in_browser(browser, url, example=0)
    wait_until_playing(browser, overlay)
    assert browser.find_element(By.CSS_SELECTOR, '#queries textarea').get_attribute('value') == examples[0][1]
    downloaded = tmp_path / 'overlay.mp4'
    urllib.request.urlretrieve(overlay.get_attribute('src'), downloaded)
    assert read_mp4(downloaded)[0].shape[0] == demo.EXAMPLE_FRAMES
    screenshot = tmp_path / 'demo.png'
    browser.execute_script('arguments[0].pause(); arguments[0].currentTime = 0;', overlay)  # the input's frame
    save_screenshot(browser, screenshot)
    if os.environ.get('MTTR_UPDATE_DEMO_SCREENSHOT') == '1':
        shutil.copyfile(screenshot, REPO / 'docs' / 'demo.png')
    print(f'click to result: {seconds:.1f} s; screenshot: {screenshot}')
