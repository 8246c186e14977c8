"""The end-of-run report of a folder batch, as the CLI prints it and the UI shows it."""

from __future__ import annotations


def format_summary(summary, options) -> str:
    """The human-readable end-of-run report."""
    lines = []
    if summary.dry_run:
        plan = summary.plan_counts
        parts = [
            f"{plan['new']} new",
            f"{plan['overwrite']} overwrite",
            f"{plan['append']} append",
            f"{plan['prepend']} prepend",
        ]
        if plan["manifest"]:
            parts.append(f"{plan['manifest']} manifest only")
        parts.append(f"{plan['skip']} skip (caption file exists)")
        if plan["done"]:
            parts.append(f"{plan['done']} done (in the manifest)")
        if plan["conflict"]:
            parts.append(f"{plan['conflict']} conflict")
        lines.append(f"dry run: {summary.total} images in {summary.root}: " + ", ".join(parts))
        if summary.preview:
            lines.append("preview:")
            for item in summary.preview:
                target = f" -> {item.sidecar}" if item.sidecar else ""
                lines.append(f"  {item.key}{target} [{item.action}]: {item.text}")
        lines += _failure_lines(summary)
        lines.append("nothing was written (dry run)")
        return "\n".join(lines)
    counts = summary.counts
    parts = [
        f"{counts[key]} {label}"
        for key, label in (
            ("new", "new"),
            ("overwritten", "overwritten"),
            ("appended", "appended"),
            ("prepended", "prepended"),
            ("unchanged", "unchanged (caption already there)"),
            ("manifest_only", "manifest only"),
            ("skipped", "skipped"),
            ("failed", "failed"),
        )
        if counts[key] or key in ("new", "skipped", "failed")
    ]
    rate = f" ({summary.images_per_second:.1f} images/s)" if summary.processed else ""
    head = "stopped" if summary.stopped else "done"
    lines.append(
        f"{head}: {summary.captioned} of {summary.total} images captioned in {summary.seconds['run']:.1f} s"
        f"{rate}: " + ", ".join(parts)
    )
    if summary.manifest:
        lines.append(f"manifest: {summary.manifest}")
    lines += _failure_lines(summary)
    if summary.stopped:
        left = summary.planned - summary.processed
        lines.append(f"stopped by the user with {left} images left; run the same command again to go on")
        if options.policy == "overwrite" and options.manifest is None:
            lines.append("(with --policy overwrite and no --manifest, a re-run redoes every image)")
    return "\n".join(lines)


def _failure_lines(summary) -> list[str]:
    if not summary.failures:
        return []
    return [f"failed ({len(summary.failures)}):"] + [f"  {f.path}: {f.reason}" for f in summary.failures]
