"""Markdown table and PNG plots of a ``vggt4d bench`` results dictionary (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

MIB = float(1 << 20)
STAGE_LABELS = {"pass1": "pass 1 (+cues observer)", "cues": "cue finalize", "clustering": "clustering",
                "refinement": "refinement", "pass2": "pass 2 (masked)", "points": "static points"}



def _save(fig, path: Path) -> Path:
    """Lay out, write (PNG, 110 dpi) and close one figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _mib(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value / MIB:.1f}"


def _target_cell(results: dict[str, Any], key: str) -> str:
    value = results.get(key)
    target = results.get("targets", {}).get(key)
    if not isinstance(value, float) or target is None:
        return "n/a"
    return f"≤ {target:g} ({'met' if value <= target else 'missed'})"


def markdown_report(results: dict[str, Any]) -> str:
    """The results as Markdown: headline ratios, per-stage times, cue comparison, memory vs frames, max S."""
    dev = results.get("device", {})
    model = results.get("model", {})
    H, W = results.get("image_size", [None, None])
    lines = [
        f"# vggt4d bench ({results.get('mode')})",
        "",
        f"- device: {dev.get('name')} ({dev.get('type')}), torch {dev.get('torch')}, "
        f"{dev.get('torch_threads')} thread(s)" + (f", CUDA {dev.get('cuda')}" if dev.get("cuda") else ""),
        f"- model: {model.get('name')}, embed_dim {model.get('embed_dim')}, "
        f"{model.get('patch_embed', {}).get('depth')} DINO + {model.get('aggregator', {}).get('depth')} frame + "
        f"{model.get('aggregator', {}).get('depth')} global blocks, heads {', '.join(model.get('heads', []))}, "
        f"{_num(results.get('params'))} parameters, {results.get('weights')}",
        f"- precision: {results.get('precision')}; images {W}x{H}; repeats {results.get('repeats')} (median); "
        f"created {results.get('created')}; run took {_num(results.get('elapsed_seconds'), 1)} s",
        "",
        "| metric | value | target |",
        "|---|---|---|",
    ]
    for key in ("vggt4d_over_vggt", "refine_over_vggt", "cue_overhead_over_pass1", "peak_mem_over_vggt"):
        lines.append(f"| `{key}` | {_num(results.get(key))} | {_target_cell(results, key)} |")
    timing = results.get("timing")
    if timing:
        lines.append(f"| `cue_overhead_over_pass1_by_difference` | "
                     f"{_num(timing.get('cue_overhead_over_pass1_by_difference'))} | (noisy; see README) |")
    lines.append("")
    if timing:
        t_plain = timing["vggt_seconds"]["median"]
        lines += [f"## Time, S = {timing['frames']}", "",
                  "| stage | median s | share of VGGT4D | / one VGGT forward |", "|---|---|---|---|",
                  f"| one VGGT forward (all heads) | {_num(t_plain)} | | 1.000 |"]
        for name, label in STAGE_LABELS.items():
            med = timing["stages"][name]["median"]
            lines.append(f"| {label} | {_num(med)} | {_num(timing['stage_share'].get(name))} | "
                         f"{_num(med / t_plain if t_plain > 0 else None)} |")
        lines += [f"| **VGGT4D total** | {_num(timing['vggt4d_seconds']['median'])} | 1.000 | "
                  f"{_num(timing['vggt4d_over_vggt'])} |", "",
                  f"Pass 2 ran: {_num(timing.get('pass2_ran'))}; refined dynamic fraction "
                  f"{_num(timing.get('dynamic_fraction'))} (coarse {_num(timing.get('coarse_fraction'))}).", ""]
        breakdown = timing.get("breakdown_seconds")
        if breakdown:
            from .breakdown import GROUPS

            lines += ["Where the network time goes (seconds, the last repeat instrumented with module hooks):", "",
                      "| module | one VGGT forward | VGGT4D pass 1 | VGGT4D pass 2 |", "|---|---|---|---|"]
            for group in GROUPS:
                cells = [breakdown.get(k, {}).get(group) for k in ("vggt", "pass1", "pass2")]
                if any(c is not None for c in cells):
                    lines.append(f"| {group} | " + " | ".join(_num(c) for c in cells) + " |")
            lines.append("")
        refine = timing.get("refinement_seconds")
        if refine:
            lines += ["Refinement sub-stages (median s): " + ", ".join(f"{k} {_num(v)}" for k, v in refine.items()),
                      ""]
        if timing.get("warning"):
            lines += [f"**Warning:** {timing['warning']}", ""]
    cues = results.get("cues")
    if cues:
        held = cues.get("observer_held_bytes", {})
        secs = cues.get("seconds", {})
        peaks = cues["peak_bytes"]
        lines += [f"## Streamed cues vs stored q/k, S = {cues['frames']}", "",
                  "| | streamed (ours) | stored q/k (reference) | stored / streamed |", "|---|---|---|---|",
                  f"| process peak, MiB (plain VGGT: {_mib(peaks.get('vggt'))}) | {_mib(peaks.get('streamed'))} | "
                  f"{_mib(peaks.get('stored'))} | {_num(cues.get('stored_over_streamed_peak'))} |",
                  f"| peak above plain VGGT, MiB | {_mib(cues['extra_peak_bytes'].get('streamed'))} | "
                  f"{_mib(cues['extra_peak_bytes'].get('stored'))} | |",
                  f"| bytes held by the observer, MiB (exact) | {_mib(held.get('streamed_peak'))} | "
                  f"{_mib(held.get('stored'))} | {_num(cues.get('observer_held_ratio'), 1)} |",
                  f"| cue compute time, s | {_num(secs.get('streamed'), 4)} | {_num(secs.get('stored'), 4)} | "
                  f"{_num(timing.get('stored_over_streamed_cue_time') if timing else None, 1)} |", "",
                  f"Largest difference between the two cue maps: {_num(cues.get('max_abs_diff'), 6)}.", ""]
    memory = results.get("memory")
    if memory:
        lines += ["## Peak memory vs frames", "", f"Measured as {memory['measure']}.", "",
                  "| S | VGGT MiB | VGGT4D MiB | VGGT4D / VGGT | VGGT4D dynamic fraction |", "|---|---|---|---|---|"]
        for row in memory["per_frame"]:
            lines.append(f"| {row['frames']} | {_mib(row['vggt'])} | {_mib(row['vggt4d'])} | {_num(row['ratio'])} | "
                         f"{_num(row.get('vggt4d_dynamic_fraction'))} |")
        for name in ("vggt", "vggt4d"):
            fit = memory.get(f"{name}_fit")
            if fit:
                lines.append(f"\n{name} line: {fit['slope'] / MIB:.2f} MiB per frame + {fit['intercept'] / MIB:.1f} "
                             f"MiB (r² {fit['r2']:.3f})")
        lines += ["", f"Slope ratio VGGT4D / VGGT: {_num(memory.get('slope_ratio'))}.", ""]
        timeline = memory.get("vggt4d_peak_timeline")
        if timeline:
            lines += [f"VGGT4D running peak at S = {memory.get('ratio_frames')} (MiB, in the order the marks were "
                      "reached; when pass 1's heads overlap pass 2 they come after `pass2_start`, and the worker's "
                      "outlier search and k-means run between them and `pass2_camera_head`): "
                      + ", ".join(f"{name} {value / MIB:.1f}" for name, value in timeline), ""]
    max_frames = results.get("max_frames")
    if max_frames:
        lines += [f"## Largest S in one shot within {max_frames['budget_gib']:.2f} GiB", ""]
        for name in ("vggt4d", "vggt"):
            entry = max_frames.get(name)
            if entry:
                probes = ", ".join(f"{p['frames']}{'✓' if p['fits'] else '✗'}" for p in entry["probes"])
                cap = " (search limit reached)" if entry.get("capped") else ""
                lines.append(f"- {name}: **S = {entry['best']}**{cap}, peak {_mib(entry.get('peak_bytes_at_best'))} "
                             f"MiB; probes {probes}")
        lines.append("")
    node = results.get("node")
    if node and not node.get("skipped"):
        lines += ["## ROS node through DDS", "", "| metric | value |", "|---|---|"]
        for key, value in node.items():
            if isinstance(value, (int, float)):
                lines.append(f"| {key} | {_num(value)} |")
        lines.append("")
    if results.get("drift"):
        from .drift import drift_markdown

        lines += drift_markdown(results["drift"])
    if results.get("skipped"):
        lines += ["## Skipped", ""] + [f"- {k}: {v}" for k, v in results["skipped"].items()] + [""]
    return "\n".join(lines)


def write_plots(results: dict[str, Any], output: Path) -> list[Path]:
    """``stages.png`` (time per stage vs one VGGT forward), ``memory_vs_frames.png`` and ``cues_memory.png``, for the
    sections present. Returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    dev = results.get("device", {}).get("name", "")
    timing = results.get("timing")
    if timing:
        fig, ax = plt.subplots(figsize=(7, 3.2))
        left = 0.0
        colors = plt.get_cmap("tab10").colors
        for i, (name, label) in enumerate(STAGE_LABELS.items()):
            width = timing["stages"][name]["median"]
            ax.barh(1, width, left=left, color=colors[i % len(colors)], label=label)
            left += width
        ax.barh(0, timing["vggt_seconds"]["median"], color="0.5", label="one VGGT forward")
        ax.set_yticks([0, 1], ["VGGT", "VGGT4D"])
        ax.set_xlabel("seconds (median)")
        ax.set_title(f"S={timing['frames']}, {dev}: VGGT4D / VGGT = {_num(timing['vggt4d_over_vggt'], 2)}",
                     fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        written.append(_save(fig, output / "stages.png"))
    memory = results.get("memory")
    if memory:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        frames = memory["frames"]
        for name, style in (("vggt", "o-"), ("vggt4d", "s-")):
            pts = [(s, v / MIB) for s, v in zip(frames, memory["peak_bytes"][name]) if v is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=name.upper())
            fit = memory.get(f"{name}_fit")
            if fit:
                xs = [min(frames), max(frames)]
                ax.plot(xs, [(fit["slope"] * x + fit["intercept"]) / MIB for x in xs], ":", color="0.4")
        ax.set_xlabel("frames S")
        ax.set_ylabel("peak memory (MiB)")
        ax.set_title(f"peak memory vs frames ({dev})", fontsize=9)
        ax.legend(fontsize=8)
        written.append(_save(fig, output / "memory_vs_frames.png"))
    cues = results.get("cues")
    if cues:
        fig, ax = plt.subplots(figsize=(5.5, 3.2))
        extra = cues["extra_peak_bytes"]
        held = cues.get("observer_held_bytes", {})
        labels = ["streamed (ours)", "stored q/k"]
        peak_vals = [(extra.get("streamed") or 0) / MIB, (extra.get("stored") or 0) / MIB]
        held_vals = [(held.get("streamed_peak") or 0) / MIB, (held.get("stored") or 0) / MIB]
        xs = range(len(labels))
        ax.bar([x - 0.2 for x in xs], peak_vals, width=0.4, label="process peak above plain VGGT")
        ax.bar([x + 0.2 for x in xs], held_vals, width=0.4, label="held by the observer (exact)")
        ax.set_xticks(list(xs), labels)
        ax.set_ylabel("MiB")
        ax.set_title(f"cue memory, S={cues['frames']} ({dev})", fontsize=9)
        ax.legend(fontsize=7)
        written.append(_save(fig, output / "cues_memory.png"))
    return written
