"""One self-contained HTML page per run: what analysts and platform engineers open after a night.

Everything is inline (CSS, charts as base64 PNG data URIs; no script, no URL of any kind), so the
page renders the same from an object store, a mail attachment or an offline laptop, and is
archived with the run it describes. Every string that came from the data (title, summary values,
column names, categories, labels, GX kwargs and observed values) is HTML-escaped: datasets are
user input, and a column named ``<script>`` must not run in the reader's browser.

Charts come from :mod:`genai_pipeline.quality.charts`; this module lays out the page. It is
about 530 lines, past the house's ~450, on purpose: every piece of HTML the pipeline writes or
publishes is here (the pages' script-blocking policy too), so all of its safety can be reviewed in
one file.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from genai_pipeline.quality.charts import (
    REAL_COLOUR,
    SYNTHETIC_COLOUR,
    column_chart,
    heatmap,
    image_strip,
    is_pair,
    pair_matrix,
)

#: image labels shown at most, and images per label and side
MAX_LABELS = 20
IMAGES_PER_SIDE = 8
#: lists and values in the GX table are cut to this many items / characters
SHOWN_ITEMS = 8
SHOWN_CHARS = 160

#: Every page the pipeline publishes forbids scripts, plugins, frames, forms and every fetch but its
#: own stylesheets and inline images: a value from the data that got into a page unescaped (GX Data
#: Docs render column names raw) stays inert text in any browser.
PAGE_POLICY = (
    '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
    "base-uri 'none'; form-action 'none'\">"
)
_HEAD = re.compile(r"<head(\s[^>]*)?>", re.IGNORECASE)

_SCOPE_ORDER = {"table": 0, "images": 0, "column": 2, "pair": 3}  # other scopes: 1
_STATUS_CLASS = {"passed": "pass", "passed with warnings": "warn", "failed": "fail"}


@dataclass(frozen=True)
class TableSection:
    """One table of several: samples of its real (as they may be shown) and synthetic columns, and
    its suite's results."""

    real: pa.Table
    synthetic: pa.Table | None
    expectations: dict[str, Any] | None = None


@dataclass(frozen=True)
class ReportInput:
    """What one run's page shows; the tabular and image parts are drawn only when given."""

    title: str  # e.g. "penguins-vae — 2026-11-25"
    status: str  # "passed", "passed with warnings" or "failed"
    summary: dict[str, str]  # headline facts (run id, model, rows, seconds…), a table at the top
    #: rows as in metrics.parquet: run_id, scope, column (str|None), metric, value, threshold
    #: (float|None), passed (bool), severity ("error"|"warning"|None)
    metrics: list[dict[str, Any]]
    #: {"suite": suite.to_json_dict(), "results": validation_result.describe_dict()}
    expectations: dict[str, Any] | None = None
    real: pa.Table | None = None  # a sample of the real rows …
    synthetic: pa.Table | None = None  # … and of the synthetic ones (same names; may lack some)
    #: (uint8 NHWC, str labels, counts): each label's mean real image, never one real image
    real_images: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    synthetic_images: tuple[np.ndarray, np.ndarray] | None = None
    #: several tables: a section each (their metrics are the rows naming them), after the relations'
    tables: dict[str, TableSection] | None = None
    #: per text column, synthetic examples and the real texts' common words (``TextSample``)
    texts: dict[str, Any] | None = None


def render_report(content: ReportInput) -> str:
    """The report as one HTML document with everything inline (no external URL of any kind)."""
    tables = content.tables or {}
    results = _gx_results(content.expectations) + [
        result for table in tables.values() for result in _gx_results(table.expectations)
    ]
    shared = [metric for metric in content.metrics if not metric.get("table")]
    sections = [("checks", "Failed checks and warnings", _checks_section(content.metrics, results))]
    if tables:
        sections.append(("relations", "Relations between the tables", _metrics_section(shared, [])))
        for index, (name, table) in enumerate(tables.items()):
            metrics = [metric for metric in content.metrics if metric.get("table") == name]
            sections.append((f"table-{index}", f"Table {_e(name)}", _table_parts(table, metrics)))
    else:
        sections += _table_sections(content.metrics, content.real, content.synthetic)
    if content.texts:
        sections.append(("texts", "Text columns: synthetic examples", _texts_section(content.texts)))
    if content.real_images is not None or content.synthetic_images is not None:
        grids = _images_section(content.real_images, content.synthetic_images)
        sections.append(("images", "Images by label: real vs synthetic", grids))
    if content.expectations is not None:
        gx = _expectations_section(content.expectations, _gx_results(content.expectations))
        sections.append(("expectations", "Great Expectations", gx))
    nav = " · ".join(f'<a href="#{key}">{heading}</a>' for key, heading, _ in sections)
    body = "\n".join(
        f'<section id="{key}"><h2>{heading}</h2>{part}</section>' for key, heading, part in sections
    )
    status_class = _STATUS_CLASS.get(content.status, "na")
    summary = "".join(
        f"<tr><th>{_e(key)}</th><td>{_e(value)}</td></tr>" for key, value in content.summary.items()
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
{PAGE_POLICY}
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(content.title)}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<header><h1>{_e(content.title)}</h1><span class="badge {status_class}">{_e(content.status)}</span></header>
<table class="summary">{summary}</table>
<nav>{nav}</nav>
{body}
</main>
</body>
</html>
"""


def _table_sections(
    metrics: list[dict[str, Any]], real: pa.Table | None, synthetic: pa.Table | None
) -> list[tuple[str, str, str]]:
    """A table's parts as ``(anchor, heading, HTML)``: its metrics, its columns' charts (with a
    sample of it) and its pairs' heatmap (with pair metrics)."""
    columns = real.column_names if real is not None else []
    sections = [("metrics", "Metrics", _metrics_section(metrics, columns))]
    if real is not None:
        sections.append(("columns", "Columns: real vs synthetic", _columns_section(real, synthetic, metrics)))
    if any(is_pair(metric) for metric in metrics):
        sections.append(("pairs", "Column pairs: association difference", _pairs_section(metrics, columns)))
    return sections


def _table_parts(table: TableSection, metrics: list[dict[str, Any]]) -> str:
    """One table of several: its parts (:func:`_table_sections`) and its suite's results, its
    metrics first and the others under sub-headings."""
    (_, _, first), *others = _table_sections(metrics, table.real, table.synthetic)
    if table.expectations is not None:
        gx = _expectations_section(table.expectations, _gx_results(table.expectations))
        others.append(("expectations", "Great Expectations", gx))
    return first + "".join(f"<h3>{heading}</h3>{part}" for _, heading, part in others)


def harden_page(page: str) -> str:
    """An HTML page (one the pipeline did not write, e.g. GX Data Docs) with :data:`PAGE_POLICY` as
    the first element of its head, before anything from the data can run."""
    found = _HEAD.search(page)
    if found is None:
        return f"<head>{PAGE_POLICY}</head>{page}"
    return page[: found.end()] + PAGE_POLICY + page[found.end() :]


def harden_pages(folder: Path) -> None:
    """:func:`harden_page` every ``.html`` file below a folder, in place."""
    for path in folder.rglob("*.html"):
        path.write_text(harden_page(path.read_text(encoding="utf-8")), encoding="utf-8")


# -- page parts -----------------------------------------------------------------------------------


def _e(value: Any) -> str:
    """Any value as escaped HTML text (quotes too: the text may land inside an attribute)."""
    return html.escape(str(value), quote=True)


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}" if isinstance(value, int | float) else _e(value)


def _verdict(metric: dict[str, Any]) -> tuple[str, str]:
    """``(css class, word)``: a metric without a threshold passes by construction, so it is shown
    as not gated rather than as a pass that was never in doubt."""
    if not metric.get("passed", True):
        return ("warn", "warning") if metric.get("severity") == "warning" else ("fail", "fail")
    return ("pass", "pass") if metric.get("threshold") is not None else ("na", "not gated")


def _limit(metric: dict[str, Any]) -> str:
    """``≥ 0.750`` or ``≤ 0.100``: a threshold with its direction (``bound``); empty when ungated."""
    threshold = metric.get("threshold")
    if threshold is None:
        return ""
    return f"{'≤' if metric.get('bound') == 'max' else '≥'} {_number(threshold)}"


def _metric_name(metric: dict[str, Any]) -> str:
    column, table = metric.get("column"), metric.get("table")
    name = f"{table}: {metric.get('metric')}" if table else str(metric.get("metric"))
    return f"{name} ({column})" if column else name


def _checks_section(metrics: list[dict[str, Any]], results: list[dict[str, Any]]) -> str:
    """Failures before warnings, metrics before expectations: what decided the run comes first."""
    items = []  # (is a warning, HTML)
    for metric in metrics:
        if not metric.get("passed", True):
            css, word = _verdict(metric)
            limit = f" (must be {_limit(metric)})" if metric.get("threshold") is not None else ""
            items.append(
                (
                    css == "warn",
                    f'<li class="{css}"><span class="tag {css}">{word}</span> '
                    f"<code>{_e(_metric_name(metric))}</code> = {_number(metric.get('value'))}{limit}</li>",
                )
            )
    for result in results:
        if not result["success"]:
            css, word = _gx_verdict(result)
            target = f" ({_e(result['target'])})" if result["target"] else ""
            items.append(
                (
                    css == "warn",
                    f'<li class="{css}"><span class="tag {css}">{word}</span> <a href="#expectations">'
                    f"<code>{_e(result['type'])}</code></a>{target}: {result['observed']}</li>",
                )
            )
    if not items:
        return '<p class="ok">Every gated metric and expectation passed.</p>'
    items.sort(key=lambda item: item[0])  # stable: the order within each kind is kept
    return f'<ul class="checks">{"".join(line for _, line in items)}</ul>'


def _metrics_section(metrics: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """Whole-table scores first; then one row per column (in the table's order) with a cell per
    metric, since every column has the same few; then the pairs, folded: there are n·(n−1)/2 of
    them and the heatmap shows them at a glance."""
    if not metrics:
        return "<p>No metrics were recorded.</p>"
    overall, per_column, pairs = [], [], []
    for metric in metrics:
        scope = metric.get("scope")
        if scope == "column" and metric.get("column") is not None:
            per_column.append(metric)
        else:
            (pairs if scope == "pair" else overall).append(metric)
    overall.sort(
        key=lambda m: (_SCOPE_ORDER.get(m.get("scope") or "", 1), str(m.get("scope")), _metric_name(m))
    )
    parts = []
    if overall:
        parts.append(_metric_table("scope", [(str(m.get("scope")), _metric_name(m), m) for m in overall]))
    if per_column:
        parts.append(_column_metric_table(per_column, columns))
    if pairs:
        rows = [(str(m.get("column")), str(m.get("metric")), m) for m in pairs]
        table = _metric_table("pair", rows)
        parts.append(f"<details><summary>{len(pairs)} column-pair metrics</summary>{table}</details>")
    return "".join(parts)


def _metric_table(heading: str, rows: list[tuple[str, str, dict[str, Any]]]) -> str:
    """``(group, metric name, metric)`` rows; the group is written once, where it starts."""
    out, previous = [], None
    for group, name, metric in rows:
        first, previous = group != previous, group
        css, word = _verdict(metric)
        out.append(
            f'<tr class="{"group" if first else ""}"><td>{_e(group) if first else ""}</td><td>{_e(name)}</td>'
            f"<td class=num>{_number(metric.get('value'))}</td>"
            f"<td class=num>{_limit(metric)}</td>"
            f'<td class="{css}">{word}</td></tr>'
        )
    head = f"<tr><th>{_e(heading)}</th><th>metric</th><th>value</th><th>threshold</th><th>result</th></tr>"
    return f'<table class="metrics"><thead>{head}</thead><tbody>{"".join(out)}</tbody></table>'


def _column_metric_table(metrics: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """Columns × metrics; a gated cell shows its threshold, and says fail or warning in words
    (colour alone is lost on some readers and in print)."""
    cells = {(m["column"], str(m.get("metric"))): m for m in metrics}
    names = sorted({name for _, name in cells}, key=lambda name: (name != "column_shape", name))
    seen = list(dict.fromkeys(column for column, _ in cells))
    rows_order = [c for c in columns if c in seen] + [c for c in seen if c not in columns]
    rows = []
    for column in rows_order:
        row = []
        for name in names:
            metric = cells.get((column, name))
            if metric is None:
                row.append("<td></td>")
                continue
            css, word = _verdict(metric)
            limit = f" <small>{_limit(metric)}</small>" if metric.get("threshold") is not None else ""
            verdict = f" <small>{word}</small>" if css in ("fail", "warn") else ""
            value = _number(metric.get("value"))
            row.append(f'<td class="num {"" if css == "na" else css}">{value}{limit}{verdict}</td>')
        rows.append(f'<tr><th scope="row">{_e(column)}</th>{"".join(row)}</tr>')
    head = "".join(f"<th>{_wrappable(name)}</th>" for name in names)
    return (
        f'<table class="metrics columns"><thead><tr><th>column</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _wrappable(name: str) -> str:
    """An identifier as escaped HTML that may break after its underscores, not mid-word."""
    return _e(name).replace("_", "_<wbr>")


def _legend() -> str:
    return (
        f'<p class="legend"><span style="background:{REAL_COLOUR}"></span>real '
        f'<span style="background:{SYNTHETIC_COLOUR}"></span>synthetic</p>'
    )


def _columns_section(real: pa.Table, synthetic: pa.Table | None, metrics: list[dict[str, Any]]) -> str:
    shapes = {
        m.get("column"): m.get("value")
        for m in metrics
        if m.get("scope") == "column" and m.get("metric") == "column_shape"
    }
    figures = []
    for name in real.column_names:
        other = synthetic.column(name) if synthetic is not None and name in synthetic.column_names else None
        uri, notes = column_chart(real.column(name), other)
        if other is None:
            notes.insert(0, "missing from the synthetic table")
        shape = f" · shape {_number(shapes[name])}" if name in shapes else ""
        image = f'<img src="{uri}" alt="{_e(name)}: real vs synthetic">' if uri else ""
        figures.append(
            f'<figure class="chart">{image}<figcaption><b>{_e(name)}</b> '
            f'<span class="muted">{_e(real.schema.field(name).type)}{shape}</span>'
            + "".join(f'<br><span class="note">{_e(note)}</span>' for note in notes)
            + "</figcaption></figure>"
        )
    return _legend() + f'<div class="grid">{"".join(figures)}</div>'


def _pairs_section(metrics: list[dict[str, Any]], columns: Sequence[str]) -> str:
    names, matrix = pair_matrix(metrics, columns)
    uri = heatmap(names, matrix)
    return (
        '<p class="muted">1 − pair_trend per pair of columns: 0 where the synthetic table keeps the real '
        "association (correlation, or contingency table) exactly; darker is further off; grey: no score.</p>"
        f'<img class="heatmap" src="{uri}" alt="column-pair association difference heatmap">'
    )


def _images_section(
    real: tuple[np.ndarray, np.ndarray, np.ndarray] | None, synthetic: tuple[np.ndarray, np.ndarray] | None
) -> str:
    """Per label: the mean of its real images (the page is published: no single real image may be
    on it) beside synthetic examples."""
    real_labels = np.asarray(real[1]).astype(str) if real is not None else np.array([], dtype=str)
    synthetic_labels = (
        np.asarray(synthetic[1]).astype(str) if synthetic is not None else np.array([], dtype=str)
    )
    labels = sorted(set(real_labels.tolist()) | set(synthetic_labels.tolist()), key=_natural)
    rows = []
    for label in labels[:MAX_LABELS]:
        mean = real[0][real_labels == label] if real is not None else []
        count = int(real[2][real_labels == label].sum()) if real is not None else 0
        cells = [_strip_cell(label, mean, f"mean of {count} images" if len(mean) else "too few to show")]
        picked = synthetic[0][synthetic_labels == label][:IMAGES_PER_SIDE] if synthetic is not None else []
        cells.append(_strip_cell(label, picked, f"{int((synthetic_labels == label).sum())} images"))
        rows.append(f'<tr><th class="label">{_e(label)}</th>{"".join(cells)}</tr>')
    more = (
        f'<p class="note">{len(labels) - MAX_LABELS} more labels not shown.</p>'
        if len(labels) > MAX_LABELS
        else ""
    )
    head = "<tr><th>label</th><th>real (mean image)</th><th>synthetic</th></tr>"
    return f'<table class="images"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>{more}'


def _texts_section(texts: dict[str, Any]) -> str:
    """Per text column: synthetic texts with their row's label (escaped, every one: texts are data),
    the real texts' common words (those at least ``min_rows`` texts use), and real texts beside the
    synthetic ones only for data that may be shown (value protection off)."""
    parts = []
    for name, sample in texts.items():
        group = _e(sample.by) if sample.by is not None else ""
        sides = [("synthetic", sample.synthetic)] + ([("real", sample.real)] if sample.real else [])
        columns = []
        for side, examples in sides:
            rows = "".join(
                f"<tr><td>{_e(label) if label is not None else ''}</td><td>{_text_cell(text)}</td></tr>"
                for label, text in examples
            )
            columns.append(
                f'<div><h4>{side}</h4><table class="metrics texts"><thead><tr><th>{group}</th><th>text</th>'
                f"</tr></thead><tbody>{rows}</tbody></table></div>"
            )
        words = ", ".join(_e(word) for word in sample.common_words)
        parts.append(
            f"<h3>{_e(name)}</h3><p>Words most real texts use: {words or '(none as common as min_rows)'}</p>"
            f'<div class="sides">{"".join(columns)}</div>'
        )
    return "".join(parts)


def _text_cell(text: str | None) -> str:
    return "<i>null</i>" if text is None else _e(text)


def _strip_cell(label: str, images: Any, caption: str) -> str:
    strip = (
        f'<img src="{image_strip(images)}" alt="{_e(label)}">'
        if len(images)
        else '<span class="muted">none</span>'
    )
    return f'<td>{strip}<div class="muted">{_e(caption)}</div></td>'


def _natural(label: str) -> tuple[int, float, str]:
    """Numeric labels in numeric order ("2" before "10"), then the rest alphabetically."""
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def _expectations_section(payload: dict[str, Any], results: list[dict[str, Any]]) -> str:
    """Failures, then warnings, then passes, each kind in the suite's order."""
    suite = _dict(payload.get("suite"))
    verdicts = [_gx_verdict(result) for result in results]
    failed = sum(css == "fail" for css, _ in verdicts)
    warned = sum(css == "warn" for css, _ in verdicts)
    heading = (
        f"<p>Suite <code>{_e(suite.get('name', '?'))}</code>: {len(results)} expectations evaluated, "
        f"{failed} failed, {warned} with warnings.</p>"
    )
    if not results:
        return heading + "<p>The payload holds no expectation results.</p>"
    rank = {"fail": 0, "warn": 1, "pass": 2}
    rows = []
    for (css, word), result in sorted(zip(verdicts, results), key=lambda pair: rank[pair[0][0]]):
        rows.append(
            f'<tr class="{"" if css == "pass" else "failed"}"><td class="{css}">{word}</td>'
            f"<td><code>{_wrappable(result['type'])}</code></td><td>{_e(result['target'])}</td>"
            f"<td>{result['parameters']}</td><td>{result['observed']}</td></tr>"
        )
    head = "<tr><th>result</th><th>expectation</th><th>column</th><th>parameters</th><th>observed</th></tr>"
    return heading + f'<table class="gx"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


# -- Great Expectations payload ---------------------------------------------------------------------


def _gx_results(payload: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each result as ``{type, target, success, severity, error, parameters, observed}`` (the last
    two as escaped HTML), from ``describe_dict()`` items or ``to_json_dict()`` ones
    (``expectation_config`` holding the type and kwargs). Results carry no severity: it is looked up
    in the suite by type and kwargs. Malformed items are skipped: the report must not fail a run."""
    payload = _dict(payload)
    suite = _dict(payload.get("suite"))
    severities = {
        _gx_key(item.get("type"), _dict(item.get("kwargs"))): item.get("severity")
        for item in _list(suite.get("expectations"))
        if isinstance(item, dict)
    }
    out = []
    for item in _list(_dict(payload.get("results")).get("expectations")):
        if not isinstance(item, dict):
            continue
        config = _dict(item.get("expectation_config"))
        kwargs = _dict(item.get("kwargs")) or _dict(config.get("kwargs"))
        type_ = item.get("expectation_type") or config.get("type") or "?"
        result = _dict(item.get("result"))
        error = _dict(item.get("exception_info"))
        message = error.get("exception_message") if error.get("raised_exception", True) else None
        targets = [kwargs[key] for key in ("column", "column_A", "column_B") if key in kwargs]
        shown = {k: v for k, v in kwargs.items() if k not in ("batch_id", "column", "column_A", "column_B")}
        out.append(
            {
                "type": type_,
                "target": ", ".join(map(str, targets)),
                "success": bool(item.get("success")),
                "severity": config.get("severity") or severities.get(_gx_key(type_, kwargs)),
                "error": message is not None,
                "parameters": "<br>".join(f"{_e(k)}={_e(_short(v))}" for k, v in shown.items()),
                "observed": _e(f"error: {message}") if message is not None else _observed(result),
            }
        )
    return out


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _gx_key(type_: Any, kwargs: dict[str, Any]) -> str:
    """An expectation's identity across the suite and its results (whose kwargs add a batch id)."""
    plain = {key: value for key, value in kwargs.items() if key != "batch_id"}
    return json.dumps([type_, plain], sort_keys=True, default=str)


def _gx_verdict(result: dict[str, Any]) -> tuple[str, str]:
    if result["success"]:
        return "pass", "pass"
    if result["severity"] == "warning":
        return "warn", "warning"
    return "fail", "error" if result["error"] else "fail"


def _observed(result: dict[str, Any]) -> str:
    if "observed_value" in result:
        return _e(_short(result["observed_value"]))
    if "unexpected_count" not in result:
        return '<span class="muted">—</span>'
    text = f"{result['unexpected_count']} unexpected"
    if isinstance(result.get("element_count"), int):
        text += f" of {result['element_count']}"
    examples = result.get("partial_unexpected_counts")
    if isinstance(examples, list) and examples:
        shown = [f"{_short(e.get('value'))} ×{e.get('count')}" for e in examples[:3] if isinstance(e, dict)]
        text += f" (e.g. {', '.join(shown)})"
    return _e(text)


def _short(value: Any) -> str:
    """A kwarg or observed value in at most a few words: long lists keep their first items."""
    if isinstance(value, list) and len(value) > SHOWN_ITEMS:
        value = [*value[:SHOWN_ITEMS], f"… +{len(value) - SHOWN_ITEMS} more"]
    text = value if isinstance(value, str) else json.dumps(_rounded(value), default=str, ensure_ascii=False)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


def _rounded(value: Any) -> Any:
    """Floats to 6 significant digits (a GX mean of 0.7790697674418605 reads as 0.77907)."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    return value


_CSS = """
body { margin: 0; background: #f6f7f9; color: #1f2328;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; }
header { display: flex; align-items: center; gap: 16px; flex-wrap: wrap; }
h1 { font-size: 24px; margin: 0; overflow-wrap: anywhere; }
h2 { font-size: 18px; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 2px solid #e3e6ea; }
code { font: 12.5px/1.4 ui-monospace, "DejaVu Sans Mono", monospace; overflow-wrap: anywhere; }
nav { margin: 14px 0 0; color: #57606a; }
nav a, a { color: #0a58ca; text-decoration: none; }
.badge { padding: 4px 12px; border-radius: 999px; font-weight: 600; font-size: 14px; color: #fff; }
.badge.pass { background: #1e7f3c; } .badge.warn { background: #b26a00; }
.badge.fail { background: #c62828; } .badge.na { background: #6e7781; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { padding: 4px 10px; text-align: left; vertical-align: top; border-bottom: 1px solid #eceef1; }
thead th { background: #f0f2f5; font-weight: 600; position: sticky; top: 0; }
table.summary { margin-top: 14px; } table.summary th { color: #57606a; font-weight: 500; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.group td { border-top: 1px solid #c9ced6; }
td.pass { background: #e5f4ea; color: #1e6b34; font-weight: 600; }
td.fail { background: #fde7e7; color: #a11b1b; font-weight: 600; }
td.warn { background: #fff3dc; color: #8a5300; font-weight: 600; }
td.na { color: #8b949e; }
ul.checks { list-style: none; padding: 0; margin: 0; }
ul.checks li { padding: 6px 10px; margin: 4px 0; border-radius: 6px; }
ul.checks li.fail { background: #fde7e7; } ul.checks li.warn { background: #fff3dc; }
.tag { display: inline-block; min-width: 58px; text-align: center; font-size: 11px; font-weight: 700;
  text-transform: uppercase; border-radius: 4px; padding: 1px 6px; color: #fff; margin-right: 6px; }
.tag.fail { background: #c62828; } .tag.warn { background: #b26a00; }
p.ok { background: #e5f4ea; color: #1e6b34; padding: 8px 12px; border-radius: 6px; }
details summary { cursor: pointer; color: #0a58ca; margin: 8px 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 14px; }
figure.chart { margin: 0; padding: 8px; border: 1px solid #e3e6ea; border-radius: 6px; }
figure.chart img { display: block; max-width: 100%; }
figcaption { margin-top: 4px; overflow-wrap: anywhere; }
.sides { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 14px; }
table.texts td { overflow-wrap: anywhere; }
.muted { color: #6e7781; font-size: 12px; } .note { color: #8a5300; font-size: 12px; }
.legend span { display: inline-block; width: 12px; height: 12px; border-radius: 2px;
  margin: 0 4px 0 12px; vertical-align: -1px; }
.legend span:first-child { margin-left: 0; }
img.heatmap { max-width: 100%; }
table.images th.label { font-size: 16px; vertical-align: middle; text-align: center; min-width: 60px; }
table.images td { padding: 6px 10px; }
table.gx tr.failed td { background: #fff5f5; }
table.gx td:nth-child(4), table.gx td:nth-child(5) {
  font-size: 12px; overflow-wrap: anywhere; max-width: 360px; }
"""
