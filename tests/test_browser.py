"""One real browser against the standalone app: Debian's chromium, headless, driven by Playwright.

Upload an image and caption it, read the caption back from the page; then run a batch of three images
from the Batch tab and find their caption files on disk. Skipped (with the reason) where chromium or
Playwright is missing; ``.ci/run`` installs both, so it runs there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.browser import driver

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(driver.missing() is not None, reason=str(driver.missing())),
]


def write_images(folder: Path, n: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"photo{i}.png"
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_caption_and_batch_in_a_real_browser(fixture_files, tmp_path):
    (upload,) = write_images(tmp_path / "upload", 1, seed=1)
    batch = write_images(tmp_path / "batch", 3, seed=2)
    args = [
        "--device",
        "cpu",
        "--models-dir",
        str(tmp_path / "models"),
        "--model",
        fixture_files["clip_prefix_pt"],
        "--clip",
        fixture_files["clip_dir"],
        "--tokenizer",
        fixture_files["tokenizer_dir"],
        "--max-new-tokens",
        "12",
    ]
    with driver.running_app(args, cwd=tmp_path) as app, driver.browser_page(tmp_path / "profile") as page:
        page.goto(app.url, wait_until="domcontentloaded")
        page.wait_for_selector("#icg_caption_button")

        # Caption tab: upload, caption, read the caption, its details and the composed prompt back.
        page.locator("#icg_image input[type=file]").set_input_files(str(upload))
        page.wait_for_selector("#icg_image img")
        page.click("#icg_caption_button")
        caption = driver.wait_for_value(page, "icg_caption", r"\S")
        assert caption.strip(), app.output
        info = driver.wait_for_value(page, "icg_caption_info", "greedy")
        assert info.startswith(fixture_files["clip_prefix_pt"])
        assert driver.wait_for_value(page, "icg_prompt", r"\S").strip()
        # Editing the caption recomposes the prompt (default template: the caption, tidied).
        driver.field(page, "icg_caption").fill("A dog runs on the beach .")
        assert driver.wait_for_value(page, "icg_prompt", "^A dog runs on the beach$")

        # Batch tab: a folder of three images gets three caption files.
        driver.open_tab(page, "Batch")
        driver.field(page, "icg_batch_folder").fill(str(tmp_path / "batch"))
        page.click("#icg_batch_start")
        progress = driver.wait_for_value(page, "icg_batch_progress", "^(Done|Stopped|Error)")
        assert progress.startswith("Done: 3 of 3 images"), f"{progress}\n{app.output}"
        assert "3 new" in progress
        results = page.locator("#icg_batch_results").inner_text()
        assert all(path.name in results for path in batch)

    for path in batch:
        sidecar = path.with_suffix(".txt")
        assert sidecar.is_file(), f"no caption file for {path.name}"
        assert sidecar.read_text(encoding="utf-8").strip()
