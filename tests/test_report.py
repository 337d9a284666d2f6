"""The HTML quality report: what it shows, that data cannot inject markup, and how a browser draws it."""

from __future__ import annotations

import base64
import html
import io
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image

from genai_pipeline.config import ValidateSpec
from genai_pipeline.datasets import BUILTINS, TabularData
from genai_pipeline.quality.charts import REAL_COLOUR, SYNTHETIC_COLOUR, THUMBNAIL_PX
from genai_pipeline.quality.expectations import check_data, data_suite, derive_suite, run_suite, table_frame
from genai_pipeline.quality.report import ReportInput, harden_pages, render_report
from genai_pipeline.quality.scoring import label_means
from genai_pipeline.quality.tabular import column_coverage, column_shapes, pair_trend_details

PENGUINS = BUILTINS["penguins"].load()
INJECTION = "<script>alert(1)</script>"
ATTRIBUTE_BREAKOUT = '"><img src=x onerror=alert(1)>'


def _perturbed(table: pa.Table, seed: int = 0) -> pa.Table:
    """A stand-in for a model's output: shifted and noisier numbers, reshuffled islands, more nulls."""
    rng = np.random.default_rng(seed)
    n = table.num_rows
    bill = pc.add(table.column("bill_length_mm"), pa.array(rng.normal(3.0, 2.0, n)))
    islands = pa.array(rng.permutation(table.column("island").to_numpy(zero_copy_only=False)))
    sex = table.column("sex").combine_chunks()
    sex = pc.if_else(pa.array(rng.random(n) < 0.2), pa.nulls(n, sex.type), sex)
    for name, values in (("bill_length_mm", bill), ("island", islands), ("sex", sex)):
        table = table.set_column(table.schema.get_field_index(name), name, values)
    return table


def _metrics(real: pa.Table, synthetic: pa.Table) -> list[dict[str, Any]]:
    """Rows as the validate stage writes them, one gate failing and one warning."""

    def row(
        scope: str, column: str | None, metric: str, value: float, threshold: float | None = None
    ) -> dict[str, Any]:
        passed = threshold is None or value >= threshold
        return {
            "run_id": "r1",
            "scope": scope,
            "column": column,
            "metric": metric,
            "value": value,
            "threshold": threshold,
            "bound": None if threshold is None else "min",
            "passed": passed,
            "severity": None if passed else ("warning" if metric == "new_row_share" else "error"),
        }

    shapes = column_shapes(real, synthetic)
    rows = [row("column", name, "column_shape", score) for name, score in shapes.items()]
    rows += [
        row("column", name, metric, value)
        for name in real.column_names
        for metric, value in column_coverage(real.column(name), synthetic.column(name)).items()
    ]
    rows += [
        row("pair", f"{first} × {second}", "pair_trend", trend.score)
        for (first, second), trend in pair_trend_details(real, synthetic).items()
    ]
    return rows + [
        row("table", None, "column_shapes", float(np.mean(list(shapes.values()))), 0.99),
        row("table", None, "new_row_share", 0.5, 0.9),
    ]


def _gx_payload(real: pa.Table, synthetic: pa.Table) -> dict[str, Any]:
    """The validate stage's payload, with the null-share check on ``sex`` made a warning (as a job's
    own expectation can be): results carry no severity, the report finds it in the suite."""
    suite = derive_suite(TabularData(real), ValidateSpec(), {}, name="report-test")
    payload = run_suite(suite, table_frame(synthetic)).payload
    for item in payload["suite"]["expectations"]:
        if (
            item["type"].startswith("expect_column_proportion_of_non_null")
            and item["kwargs"]["column"] == "sex"
        ):
            item["severity"] = "warning"
    return payload


@pytest.fixture(scope="module")
def penguins_report() -> str:
    synthetic = _perturbed(PENGUINS)
    return render_report(
        ReportInput(
            title="penguins-vae — 2026-11-25",
            status="failed",
            summary={"run id": "20261125T010203Z-abc123", "model": "vae", "rows": "344"},
            metrics=_metrics(PENGUINS, synthetic),
            expectations=_gx_payload(PENGUINS, synthetic.drop_columns(["year"])),
            real=PENGUINS,
            synthetic=synthetic.drop_columns(["year"]),
        )
    )


def _sources(page: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]*)"', page)


def test_tabular_report_shows_every_part(penguins_report: str) -> None:
    page = penguins_report
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"https?://", page) and "<script" not in page
    assert all(s.startswith(("data:image/png;base64,", "#")) for s in _sources(page))
    charts = re.findall(r'<figure class="chart"><img src="data:image/png;base64,[^"]+" alt="([^"]+)"', page)
    assert charts == [f"{name}: real vs synthetic" for name in PENGUINS.column_names]
    assert "missing from the synthetic table" in page  # the dropped year column
    assert 'alt="column-pair association difference heatmap"' in page
    # failures come first, the failing gate before the warning
    checks = page[page.index('id="checks"') : page.index('id="metrics"')]
    assert checks.index("column_shapes") < checks.index("new_row_share")
    assert (
        '<span class="tag fail">fail</span>' in checks and '<span class="tag warn">warning</span>' in checks
    )
    assert "expect_table_columns_to_match_ordered_list" in checks  # the GX failure (year is missing)
    warnings = checks[checks.index('<span class="tag warn">') :]
    assert "(sex)" in warnings and '<span class="tag fail">' not in warnings  # failures come first
    metrics = page[page.index('id="metrics"') : page.index('id="columns"')]
    # the whole-table gates, then a row per column, then the 8·7/2 pairs
    assert re.findall(r'<tr><th scope="row">([^<]+)</th>', metrics) == PENGUINS.column_names
    assert metrics.count("<td>pair_trend</td>") == 28
    assert metrics.index("<td>column_shapes</td>") < metrics.index('<th scope="row">')
    assert metrics.index('<th scope="row">') < metrics.index("<td>pair_trend</td>")
    assert re.search(
        r"<td class=num>0\.500</td><td class=num>≥ 0\.900</td><td class=\"warn\">warning</td>", metrics
    )
    gx = page[page.index('id="expectations"') :].replace("<wbr>", "")
    assert "expect_column_values_to_be_in_set" in gx and "expect_column_proportion_of_non_null" in gx
    # failed expectations first, then warnings, then passes
    assert gx.index('<td class="fail">') < gx.index('<td class="warn">') < gx.index('<td class="pass">')
    assert 0.1e6 < len(page) < 2e6


def test_values_from_the_data_are_escaped() -> None:
    table = pa.table({INJECTION: [INJECTION, "b", None] * 5, "x": [1.5, 2.0, 3.0] * 5})
    metrics = [
        {"run_id": "r", "scope": "column", "column": INJECTION, "metric": "column_shape", "value": 0.2,
         "threshold": 0.5, "passed": False, "severity": "error"},
        {"run_id": "r", "scope": "pair", "column": f"{INJECTION} × x", "metric": "pair_trend", "value": 0.9,
         "threshold": None, "passed": True, "severity": None},
    ]  # fmt: skip
    suite = derive_suite(TabularData(table), ValidateSpec(), {}, name=ATTRIBUTE_BREAKOUT)
    payload = run_suite(suite, table_frame(table.slice(0, 2))).payload
    images = np.zeros((2, 8, 8, 1), dtype=np.uint8)
    labels = np.array([ATTRIBUTE_BREAKOUT, INJECTION])
    page = render_report(
        ReportInput(
            title=INJECTION,
            status=ATTRIBUTE_BREAKOUT,
            summary={INJECTION: ATTRIBUTE_BREAKOUT},
            metrics=metrics,
            expectations=payload,
            real=table,
            synthetic=table,
            real_images=label_means(images, labels, 1),
            synthetic_images=(images, labels[::-1]),
        )
    )
    assert INJECTION not in page and ATTRIBUTE_BREAKOUT not in page
    assert "<img src=x" not in page and "<script" not in page
    assert page.count(html.escape(INJECTION)) > 5 and page.count(html.escape(ATTRIBUTE_BREAKOUT)) > 3
    assert f"<figcaption><b>{html.escape(INJECTION)}</b>" in page
    assert f'<th class="label">{html.escape(ATTRIBUTE_BREAKOUT)}</th>' in page


def _png(uri: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(uri.removeprefix("data:image/png;base64,"))))


def test_image_report_has_a_grid_per_label() -> None:
    images, labels = BUILTINS["digits"].load()
    rng = np.random.default_rng(1)
    synthetic = np.clip(images[:500].astype(int) + rng.integers(-40, 40, images[:500].shape), 0, 255)
    keep = labels[:500] != "7"  # a label the model never produced
    page = render_report(
        ReportInput(
            title="digits-diffusion",
            status="passed with warnings",
            summary={"images": "500"},
            metrics=[
                {
                    "run_id": "r",
                    "scope": "images",
                    "column": None,
                    "metric": "pixel_histogram",
                    "value": 0.97,
                    "threshold": None,
                    "passed": True,
                    "severity": None,
                },
            ],  # fmt: skip
            real_images=label_means(images, labels, 5),
            synthetic_images=(synthetic[keep].astype(np.uint8), labels[:500][keep]),
        )
    )
    assert not re.search(r"https?://", page) and 'class="badge warn"' in page
    rows = re.findall(r'<tr><th class="label">(\w+)</th>(.*?)</tr>', page)
    assert [label for label, _ in rows] == [str(d) for d in range(10)]
    for label, cells in rows:
        strips = re.findall(r'<img src="(data:image/png;base64,[^"]+)"', cells)
        assert len(strips) == (1 if label == "7" else 2)
        mean, synthetic_strip = _png(strips[0]), _png(strips[-1])
        assert "mean of" in cells  # the page is published: of the real images, only each label's mean
        assert mean.mode == "L" and mean.width == mean.height == THUMBNAIL_PX  # one 8×8 image drawn 7× larger
        if label != "7":
            assert synthetic_strip.width == 8 * THUMBNAIL_PX + 7 * 4  # eight synthetic images
    assert "Every gated metric and expectation passed." in page


def _chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def _near(pixels: np.ndarray, colour: str, tolerance: int = 24) -> int:
    target = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels.astype(int) - target).max(axis=-1) <= tolerance).sum())


def _browser() -> str:
    """Chromium, or a skip (a failure where ``GENAI_REQUIRE_CHROMIUM=1``, as in CI)."""
    browser = _chromium()
    if browser is None:
        if os.environ.get("GENAI_REQUIRE_CHROMIUM") == "1":
            pytest.fail("GENAI_REQUIRE_CHROMIUM=1 but no chromium, chromium-browser or google-chrome on PATH")
        pytest.skip("no chromium, chromium-browser or google-chrome on PATH (apt-get install chromium)")
    return browser


def _dom_after_scripts(browser: str, page: Path, profile: Path) -> str:
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}"]
    command += ["--virtual-time-budget=2000", "--dump-dom", page.as_uri()]
    env = {**os.environ, "HOME": str(profile)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert "<html" in done.stdout, f"chromium printed no page (exit {done.returncode}): {done.stderr[-2000:]}"
    return done.stdout


def test_no_script_from_the_data_runs_in_any_published_page(tmp_path: Path) -> None:
    """GX Data Docs render column names raw: a column named <script>… ran in the reader's browser.
    Every page the pipeline publishes forbids scripts (a Content-Security-Policy first in its head);
    the same payload in the same page without it does run, so the browser here is able to tell."""
    browser = _browser()
    payload = "<script>document.title='PW'+'NED'</script>"  # the page says PWNED only if it ran
    data = TabularData(pa.table({payload: ["a", "b", "a", "c"] * 10, "x": list(range(40))}))
    docs = tmp_path / "docs"
    check_data(data_suite(data, ValidateSpec(), "xss"), data, docs)
    pages = sorted(docs.rglob("*.html"))
    raw = [page for page in pages if payload in page.read_text(encoding="utf-8")]
    assert raw, "the payload is no longer in the Data Docs: this test would prove nothing"
    assert "PWNED" in _dom_after_scripts(browser, raw[0], tmp_path / "p0")  # unprotected, it runs
    harden_pages(docs)
    for index, page in enumerate(pages):
        assert page.read_text(encoding="utf-8").count("Content-Security-Policy") == 1
        assert "PWNED" not in _dom_after_scripts(browser, page, tmp_path / f"p{index + 1}"), page.name
    report = tmp_path / "report.html"
    report.write_text(render_report(ReportInput(title=payload, status="passed", summary={}, metrics=[])))
    assert "PWNED" not in _dom_after_scripts(browser, report, tmp_path / "report-profile")


def test_headless_chromium_draws_the_charts(penguins_report: str, tmp_path: Path) -> None:
    browser = _browser()
    page, shot = tmp_path / "report.html", tmp_path / "report.png"
    page.write_text(penguins_report, encoding="utf-8")
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1280,4000",
        page.as_uri(),
    ]
    env = {**os.environ, "HOME": str(tmp_path)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert shot.exists(), f"chromium wrote no screenshot (exit {done.returncode}): {done.stderr[-2000:]}"
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (4000, 1280, 3)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # not a blank or error page
    # the bars and histogram outlines of both series (the page without its charts has ~150 such pixels)
    assert _near(pixels, REAL_COLOUR) > 20_000 and _near(pixels, SYNTHETIC_COLOUR) > 20_000
