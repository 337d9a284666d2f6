"""A run in a few lines: the facts at the top of its report, and its summary for people.

The markdown summary is what the Prefect artifact shows (and what a terminal can print); it is
drawn from the run's manifest, so a failed run and a published one read alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genai_pipeline.refs import DatasetRef, GeneratedRef, ModelRef
from genai_pipeline.runs import Run

#: metric scopes shown in the run summary (per-column and per-pair rows are in the report)
HEADLINE_SCOPES = ("table", "images")


def browser_url(url: str) -> str:
    """A URL a browser opens: local paths become ``file://`` URLs."""
    return url if "://" in url else Path(url).resolve().as_uri()


def report_facts(
    run: Run, dataset: DatasetRef, generated: GeneratedRef, model: ModelRef | None = None
) -> dict[str, str]:
    """The facts at the top of the report."""
    facts = {
        "run id": run.run_id,
        "model": f"{run.job.model.family} ({dataset.modality})",
        "dataset": f"{dataset.source}: {dataset.num_rows} rows, {dataset.holdout_rows} held out",
        "generated": f"{generated.num_samples} samples in {generated.seconds:.1f} s"
        + ("".join(f", {name}: {rows}" for name, rows in generated.tables.items())),
        "seed": str(run.job.generate_seed),
    }
    protection = run.job.dataset.value_protection
    if dataset.modality == "tabular":
        made_fresh = [name for name, role in dataset.roles.items() if role["role"] in ("id", "pii")]
        facts["privacy"] = (
            f"values fewer than {protection.min_rows} rows hold are protected"
            if protection.enabled
            else "value protection off: real values may be replayed"
        ) + (f"; made fresh: {', '.join(made_fresh)}" if made_fresh else "")
    if model is not None and (spent := privacy_line(model.fit)):
        facts["differential privacy"] = spent
    return facts


def privacy_line(fit: dict[str, Any]) -> str | None:
    """``ε 2.894 of 3 spent (δ 1e-05), 1,250 DP-SGD steps``: what training spent, if it was private."""
    privacy = fit.get("privacy")
    if not privacy:
        return None
    return (
        f"ε {privacy['epsilon']:.3f} of {privacy['target_epsilon']:g} spent (δ {privacy['delta']:.0e}), "
        f"{privacy['steps']:,} DP-SGD steps, noise multiplier {privacy['noise_multiplier']:.2f}"
    )


def summary_markdown(run: Run, manifest: dict[str, Any]) -> str:
    """A short report of a run for a Prefect artifact or a terminal."""
    status = manifest.get("status", "unknown")
    lines = [f"# {run.job.name} — {run.run_date} — {status}", "", f"- run id: `{run.run_id}`"]
    if "model" in manifest:
        fit = manifest["model"]["fit"]
        lines.append(
            f"- model: {manifest['model']['family']} ({manifest['model']['modality']}), "
            f"{fit['steps']} steps in {fit['seconds']:.1f} s on {fit['device']}"
        )
        if spent := privacy_line(fit):
            lines.append(f"- differential privacy: {spent}")
    if "dataset" in manifest:
        ds = manifest["dataset"]
        lines.append(
            f"- dataset: `{ds['source']}`, {ds['num_rows']} rows ({ds.get('holdout_rows', 0)} held out), "
            f"fingerprint `{ds['fingerprint']}`"
        )
    if "generated" in manifest:
        lines.append(f"- generated: {manifest['generated']['num_samples']} samples")
    if "quality" in manifest:
        q = manifest["quality"]
        evaluated, failed = q["expectations_evaluated"], q["expectations_failed"]
        lines.append(f"- expectations: {evaluated - failed}/{evaluated} passed")
        lines += [f"- **warning:** {warning}" for warning in q.get("warnings", [])]
        lines += ["", "| metric | column | value | threshold | passed |", "|---|---|---|---|---|"]
        for m in q["metrics"]:
            if m["scope"] not in HEADLINE_SCOPES:
                continue
            threshold = (
                "" if m["threshold"] is None else f"{'≥' if m['bound'] == 'min' else '≤'} {m['threshold']}"
            )
            passed = "yes" if m["passed"] else ("warning" if m["severity"] == "warning" else "NO")
            lines.append(
                f"| {m['metric']} | {m['column'] or ''} | {m['value']:.3f} | {threshold} | {passed} |"
            )
    if manifest.get("error"):
        lines += ["", f"**Error:** {manifest['error']}"]
    if "location" in manifest:
        lines += ["", f"Output: `{manifest['location']}`"]
    if "report" in manifest:
        lines += ["", f"Quality report: [{manifest['report']}]({browser_url(manifest['report'])})"]
    return "\n".join(lines)
