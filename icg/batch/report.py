"""The end-of-run report of a folder batch, as the CLI prints it and the UI shows it."""

from __future__ import annotations

from icg.sinks import printable


def format_summary(summary, options) -> str:
    """The human-readable end-of-run report (valid Unicode: undecodable name bytes as ``\\xNN``)."""
    return printable("\n".join(_summary_lines(summary, options)))


def _summary_lines(summary, options) -> list[str]:
    if summary.total == 0 and not summary.failures:
        return [_nothing_found(summary, options)]
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
            parts.append(f"{plan['done']} done (in an earlier run)")
        if plan["conflict"]:
            parts.append(f"{plan['conflict']} conflict")
        if plan["unreadable"]:
            parts.append(f"{plan['unreadable']} unreadable")
        lines.append(f"dry run: {summary.total} images in {summary.root}: " + ", ".join(parts))
        if summary.preview:
            lines.append("preview:")
            for item in summary.preview:
                target = f" -> {item.sidecar}" if item.sidecar else ""
                lines.append(f"  {item.key}{target} [{item.action}]: {item.text}")
        lines += _failure_lines(summary)
        lines.append("nothing was written (dry run)")
        return lines
    counts = summary.counts
    if summary.planned == 0 and summary.total and not summary.stopped:
        lines.append(f"nothing to do: {counts['skipped']} of {summary.total} images already captioned")
        if summary.manifest:
            lines.append(f"manifest: {summary.manifest}")
        return lines + _failure_lines(summary)
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
    rate = f" ({summary.images_per_second:.1f} images/s)" if summary.captioned else ""
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
    return lines


def _failure_lines(summary) -> list[str]:
    if not summary.failures:
        return []
    return [f"failed ({len(summary.failures)}):"] + [f"  {f.path}: {f.reason}" for f in summary.failures]


def _nothing_found(summary, options) -> str:
    """``no images found in DIR (and its subfolders); looked for .bmp, .jpeg, ...``"""
    from icg.discovery import normalise_extensions
    from icg.imaging import supported_extensions

    wanted = options.extensions if options.extensions is not None else supported_extensions()
    where = " or its subfolders" if options.recursive else " (subfolders not searched)"
    return (
        f"no images found in {summary.root}{where}; looked for files ending in "
        + ", ".join(sorted(normalise_extensions(wanted)))
    )
