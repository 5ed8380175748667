"""Write a run's report: ``report.json``, PNG plots, ``report.html`` and a text table.

Why these three: JSON is what CI and dashboards diff between Ferry versions; the PNGs
(one figure per metric, one line per participant, link changes as vertical lines)
are what a person looks at first; the HTML puts the verdict, the table and the plots
on one page that opens from the output folder without a server. Plots use
matplotlib's Agg backend, so no display is needed.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from qa.result import RunResult

PLOTS: list[tuple[str, str, list[tuple[str, str, float]], str]] = [
    # file stem, title, [(series key, line style, scale)], y label
    ("bitrate", "Bitrate (solid: received, dashed: sent)",
     [("recv_bps", "-", 1e-3), ("sent_bps", "--", 1e-3)], "kbit/s"),
    ("estimate", "Ferry's bandwidth estimate per subscriber", [("estimate_bps", "-", 1e-3)],
     "kbit/s"),
    ("layer", "Simulcast layer forwarded (solid) and targeted (dotted)",
     [("layer", "-", 1.0), ("target_layer", ":", 1.0)], "layer (0 = lowest)"),
    ("loss", "Loss per 500 ms (solid: network, before recovery; dashed: after NACK/RTX)",
     [("loss_before", "-", 100.0), ("loss_after", "--", 100.0)], "%"),
    ("rtt", "Round-trip time (grey: how late the runner's own event loop woke)",
     [("rtt_ms", "-", 1.0)], "ms"),
    ("freezes", "Video fps: decoded (solid, worst track), encoded by publishers (dashed); "
     "shaded: freezes", [("fps", "-", 1.0), ("sent_fps", "--", 1.0)], "frames/s"),
    ("latency", "Glass-to-glass latency (solid: median per 500 ms, dotted: max); Chrome's "
     "jitter buffers (dashed: video, dash-dot: audio)",
     [("latency_ms", "-", 1.0), ("latency_max_ms", ":", 1.0), ("jitter_buffer_ms", "--", 1.0),
      ("audio_jitter_buffer_ms", "-.", 1.0)], "ms"),
]
CAPACITY_PLOTS = ("bitrate", "estimate")  # drawn with the downlink's capacity (thin, dash-dot)
CAPACITY_CLIP = 3.0  # a capacity above 3x the plot's largest figure is named, not drawn


def _json_default(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, set | tuple):
        return list(obj)
    return str(obj)


def report_dict(result: RunResult) -> dict[str, Any]:
    """The JSON document (also what the HTML and the table are made from)."""
    sc = result.scenario
    return {
        "scenario": sc.name,
        "description": sc.description,
        "file": str(sc.path) if sc.path else None,
        "room": sc.room,
        "duration_s": sc.duration_s,
        "started_at": result.started_at,
        "passed": result.passed,
        "expectations": result.expectations,
        "notes": result.notes,
        "link_changes": result.events,
        "schedule": {
            p.name: {"initial": p.link_label,
                     "changes": [{"at_s": c.at_s, "link": c.label} for c in p.schedule]}
            for p in sc.participants
        },
        "server": result.server,
        "relay": result.relay,
        "runner": result.runner,
        "t": result.t,
        "participants": result.participants,
        "plots": [f"{stem}.png" for stem, *_ in PLOTS],
    }


def plot_groups(result: RunResult) -> list[tuple[str, list[str]]]:
    """(label, members) per line of the plots: a participant alone, or a group of
    identical participants (``count > 1``, same client and link) drawn as one band."""
    names = list(result.participants)
    taken: set[str] = set()
    out: list[tuple[str, list[str]]] = []
    for spec in result.scenario.participants:
        members = [n for n in names if n != spec.name and n.startswith(spec.name)
                   and n[len(spec.name):].isdigit()]
        if len(members) > 1:
            out.append((f"{spec.name} (x{len(members)})", members))
            taken.update(members)
    return [(n, [n]) for n in names if n not in taken] + out


def _series(result: RunResult, name: str, key: str, scale: float) -> list[float | None]:
    return [None if v is None else float(v) * scale
            for v in result.participants[name]["series"].get(key, [])]


def _layer_lines(result: RunResult, members: list[str]) -> list[tuple[str, list[list[float | None]]]]:
    """The forwarded layer per received video track, as (label suffix, one row per
    member): the minimum over tracks would hide a track held high behind a low one."""
    tracks: dict[str, list[list[float | None]]] = {}
    for m in members:
        for tsid, ys in (result.participants[m].get("layer_tracks") or {}).items():
            tracks.setdefault(tsid, []).append([None if v is None else float(v) for v in ys])
    if len(tracks) <= 1:
        return [("", [_series(result, m, "layer", 1.0) for m in members])]
    return [(f" {tsid[-4:]}", rows) for tsid, rows in tracks.items()]


def _link_events(result: RunResult) -> list[tuple[float, str]]:
    """Link changes merged by time: (t, "who: link; who: link")."""
    merged: dict[float, list[str]] = {}
    for ev in result.events:
        merged.setdefault(round(ev["t"], 1), []).append(f"{ev['participant']}: {ev['link']}")
    return sorted((t, "; ".join(_compact(texts))) for t, texts in merged.items())


def _compact(texts: list[str]) -> list[str]:
    """``wifi1: 3g, wifi2: 3g`` -> ``wifi1-2: 3g`` (a group changing together)."""
    by_link: dict[str, list[str]] = {}
    for text in texts:
        who, _, link = text.partition(": ")
        by_link.setdefault(link, []).append(who)
    out = []
    for link, whos in by_link.items():
        out.append(f"{whos[0]}..{whos[-1]} ({len(whos)}): {link}" if len(whos) > 2
                   else f"{', '.join(whos)}: {link}")
    return out


def write_plots(result: RunResult, out_dir: Path) -> list[Path]:
    """One PNG per metric in ``PLOTS``; a metric with no data says so on its figure.

    Groups of identical participants are one band (min..max) with their median; link
    changes are numbered lines, listed under the plot; the bitrate and estimate plots
    carry each participant's downlink capacity.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    t = result.t
    groups = plot_groups(result)
    cmap = plt.get_cmap("tab20" if len(groups) > 10 else "tab10")
    colors = {label: cmap(i % cmap.N) for i, (label, _) in enumerate(groups)}
    events = _link_events(result)
    for stem, title, keys, ylabel in PLOTS:
        fig, ax = plt.subplots(figsize=(9, 4.2 + 0.16 * len(events)), dpi=90)
        top = 0.0
        with_data: set[str] = set()
        labeled: set[str] = set()
        for label, members in groups:
            drawn = _draw_group(ax, result, stem, keys, label, members, colors[label], labeled)
            if drawn is not None:
                with_data.add(label)
                top = max(top, drawn)
        any_data = bool(with_data)
        lag = (result.runner or {}).get("loop_lag_ms") or []
        if stem == "rtt" and any(v for v in lag):
            _draw(ax, t, [[None if v is None else float(v) for v in lag]], "--", "grey",
                  "runner loop lag", False)
        if stem in CAPACITY_PLOTS and any_data:
            _draw_capacity(ax, result, [g for g in groups if g[0] in with_data], colors, t, top)
        _draw_events(fig, ax, events)
        if not any_data:
            ax.text(0.5, 0.5, "no data (not exposed by this Ferry / client)",
                    transform=ax.transAxes, ha="center", va="center", color="grey")
        ax.set_title(title, fontsize=10, pad=12 if events else 6)
        ax.set_xlabel("time since start (s)")
        ax.set_ylabel(ylabel)
        if t:
            ax.set_xlim(0, max(t[-1], 1e-3))
        ax.grid(alpha=0.3)
        if any_data and len(groups) <= 24:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        fig.tight_layout(rect=(0, 0.16 * len(events) / (4.2 + 0.16 * len(events)) + 0.02
                               if events else 0, 1, 1))
        path = out_dir / f"{stem}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def _draw_group(ax: Any, result: RunResult, stem: str, keys: list[tuple[str, str, float]],
                label: str, members: list[str], color: Any, labeled: set[str]) -> float | None:
    """One participant's or group's lines of one plot; the largest value drawn (None:
    no data). ``labeled`` holds the legend entries already given."""
    top: float | None = None
    for key, style, scale in keys:
        if stem == "layer" and key == "layer":
            lines = _layer_lines(result, members)
        else:
            lines = [("", [_series(result, m, key, scale) for m in members])]
        for i, (suffix, rows) in enumerate(lines):
            line_style = style if i == 0 else ("--", "-.", "-")[(i - 1) % 3]
            name = label + suffix
            drawn = _draw(ax, result.t, rows, line_style, color,
                          name if name not in labeled else None, "layer" in key)
            if drawn is not None:
                labeled.add(name)
                top = max(top or 0.0, drawn)
    if stem == "freezes":
        for m in members:  # a group's shade darkens with how many froze
            for fr in result.participants[m].get("freezes") or []:
                ax.axvspan(fr["t"], fr["t"] + fr["ms"] / 1000.0, color=color,
                           alpha=0.25 / len(members), linewidth=0)
    return top


def _draw_events(fig: Any, ax: Any, events: list[tuple[float, str]]) -> None:
    """Numbered vertical lines, and their text listed under the plot (long netem specs
    written along a line were unreadable)."""
    for i, (at, _text) in enumerate(events, start=1):
        ax.axvline(at, color="grey", linestyle=":", linewidth=1)
        ax.annotate(str(i), (at, 1.0), xycoords=("data", "axes fraction"), fontsize=8,
                    va="bottom", ha="center", color="dimgrey")
    if events:
        notes = "\n".join(f"{i}: t={at:g}s {text}"[:150]
                          for i, (at, text) in enumerate(events, start=1))
        fig.text(0.01, 0.01, notes, fontsize=7, color="dimgrey", va="bottom", ha="left")


def _draw(ax: Any, t: list[float], rows: list[list[float | None]], style: str, color: Any,
          label: str | None, steps: bool) -> float | None:
    """One participant's line, or a group's median line over its min..max band;
    returns the largest value drawn (None: nothing to draw)."""
    points = []
    for k, x in enumerate(t):
        vals = [r[k] for r in rows if k < len(r) and r[k] is not None]
        if vals:
            vals.sort()
            points.append((x, vals[0], vals[len(vals) // 2], vals[-1]))
    if not points:
        return None
    xs = [p[0] for p in points]
    draw = "steps-post" if steps else "default"
    ax.plot(xs, [p[2] for p in points], style, color=color, label=label, linewidth=1.3,
            drawstyle=draw)
    if len(rows) > 1:
        ax.fill_between(xs, [p[1] for p in points], [p[3] for p in points], color=color,
                        alpha=0.18, linewidth=0, step="post" if steps else None)
    return max(p[3] for p in points)


def _draw_capacity(ax: Any, result: RunResult, groups: list[tuple[str, list[str]]],
                   colors: dict[str, Any], t: list[float], top: float) -> None:
    """Each group's downlink capacity (kbit/s), unless it is far above the data
    (a 100 Mbit/s broadband link would flatten every other line): then named only."""
    above: list[str] = []
    for label, members in groups:
        caps = [_series(result, members[0], "capacity_bps", 1e-3)]
        finite = [c for c in caps[0] if c is not None]
        if not finite:
            continue
        if top > 0 and min(finite) > CAPACITY_CLIP * top:
            above.append(f"{label} {max(finite) / 1000:g} Mbit/s")
            continue
        # a sample's capacity covers the interval that ends at its time: drawn from its start
        step = t[1] - t[0] if len(t) > 1 else 0.0
        xs = [x - step for x, c in zip(t, caps[0], strict=False) if c is not None]
        ax.plot(xs, finite, "-.", color=colors[label], linewidth=0.9, alpha=0.8,
                drawstyle="steps-post", label=f"{label} capacity")
    if above:
        ax.text(0.99, 0.98, "capacity above the plot: " + ", ".join(above)[:120],
                transform=ax.transAxes, ha="right", va="top", fontsize=7, color="dimgrey")


TABLE_COLUMNS: list[tuple[str, str, str]] = [
    # key, header, format
    ("client", "client", "{}"),
    ("profile", "link", "{}"),
    ("decoded_fps", "fps", "{:.1f}"),
    ("final_fps", "end fps", "{:.1f}"),
    ("freeze_count", "freezes", "{}"),
    ("freeze_max_ms", "max frz ms", "{:.0f}"),
    ("loss_before_recovery", "net loss", "pct"),
    ("loss_after_recovery", "loss after", "pct"),
    ("recv_bps", "recv kbps", "kbps"),
    ("sent_bps", "sent kbps", "kbps"),
    ("rtt_ms", "rtt ms", "{:.0f}"),
    ("rtt_max_ms", "rtt max", "{:.0f}"),
    ("latency_p50_ms", "g2g p50", "{:.0f}"),
    ("latency_p95_ms", "g2g p95", "{:.0f}"),
    ("audio_latency_p50_ms", "m2e p50", "{:.0f}"),
    ("utilization", "util", "pct"),
    ("layer_mean", "layer", "{:.1f}"),
]


LINK_CELL = 48


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if fmt == "pct":
        return f"{float(value) * 100:.1f}%"
    if fmt == "kbps":
        return f"{float(value) / 1000:.0f}"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def summary_rows(result: RunResult) -> list[list[str]]:
    """Header + one row per participant, as strings."""
    rows = [["participant"] + [h for _, h, _ in TABLE_COLUMNS]]
    for name, p in result.participants.items():
        cells = [_cell(p.get(k), f) for k, _, f in TABLE_COLUMNS]
        if p.get("link") and p.get("link") != p.get("profile"):
            cells[1] = f"{p.get('profile')} -> {p['link']}"  # where the schedule left it
        if len(cells[1]) > LINK_CELL:
            cells[1] = cells[1][:LINK_CELL - 3] + "..."  # report.json has the whole spec
        rows.append([name] + cells)
    return rows


def summary_table(result: RunResult) -> str:
    """The table ``ferry netem run`` prints, plus the verdict of every expectation."""
    rows = summary_rows(result)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    for e in result.expectations:
        mark = "PASS" if e["ok"] else "FAIL"
        lines.append(f"{mark}  {e['expect']}" + (f"   ({e['detail']})" if e["detail"] else ""))
    for note in result.notes:
        lines.append(f"note: {note}")
    lines.append(f"result: {'PASSED' if result.passed else 'FAILED'}")
    return "\n".join(lines)


def write_html(result: RunResult, out_dir: Path, plots: list[Path]) -> Path:
    """A single self-contained page (plots referenced by relative path)."""
    esc = html.escape
    rows = summary_rows(result)
    table = "<table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in rows[0]) + "</tr>"
    for r in rows[1:]:
        table += "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>"
    table += "</table>"
    checks = "".join(
        f"<li class='{'ok' if e['ok'] else 'fail'}'>{'PASS' if e['ok'] else 'FAIL'} "
        f"<code>{esc(e['expect'])}</code> {esc(e['detail'])}</li>"
        for e in result.expectations
    )
    events = "".join(f"<li>t={ev['t']:.1f}s {esc(ev['participant'])}: {esc(ev['link'])}</li>"
                     for ev in result.events) or "<li>none</li>"
    notes = "".join(f"<li>{esc(n)}</li>" for n in result.notes)
    imgs = "".join(f"<figure><img src='{esc(p.name)}' alt='{esc(p.stem)}'></figure>" for p in plots)
    sc = result.scenario
    verdict = "PASSED" if result.passed else "FAILED"
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>netem {esc(sc.name)}: {verdict}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}
table{{border-collapse:collapse;font-size:13px}} td,th{{border:1px solid #ccc;padding:3px 7px}}
th{{background:#f3f3f3}} .ok{{color:#176b2c}} .fail{{color:#b00020;font-weight:bold}}
.verdict{{font-size:1.4em}} img{{max-width:100%}}
</style></head><body>
<h1>netem scenario <code>{esc(sc.name)}</code></h1>
<p>{esc(sc.description)}</p>
<p class="verdict {'ok' if result.passed else 'fail'}">{verdict}</p>
<p>duration {sc.duration_s:g} s, room <code>{esc(sc.room)}</code>,
Ferry <code>{esc(str(result.server.get('url', '')))}</code></p>
<h2>Expectations</h2><ul>{checks}</ul>
<h2>Participants</h2>{table}
<h2>Link changes</h2><ul>{events}</ul>
{f'<h2>Notes</h2><ul>{notes}</ul>' if notes else ''}
<h2>Plots</h2>{imgs}
<p>Raw data: <a href="report.json">report.json</a></p>
</body></html>
"""
    path = out_dir / "report.html"
    path.write_text(page)
    return path


def write_report(result: RunResult, out_dir: Path) -> dict[str, Path]:
    """Write everything into ``out_dir`` (created); returns the paths by kind."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = report_dict(result)
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(data, indent=1, default=_json_default))
    plots = write_plots(result, out_dir)
    html_path = write_html(result, out_dir, plots)
    return {"json": json_path, "html": html_path, **{p.stem: p for p in plots}}
