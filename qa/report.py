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
    ("rtt", "Round-trip time", [("rtt_ms", "-", 1.0)], "ms"),
    ("freezes", "Decoded video fps (worst track); shaded: freezes > 500 ms",
     [("fps", "-", 1.0)], "frames/s"),
]


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
        "t": result.t,
        "participants": result.participants,
        "plots": [f"{stem}.png" for stem, *_ in PLOTS],
    }


def write_plots(result: RunResult, out_dir: Path) -> list[Path]:
    """One PNG per metric in ``PLOTS``; a metric with no data says so on its figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    t = result.t
    names = list(result.participants)
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    colors = {n: cmap(i % cmap.N) for i, n in enumerate(names)}
    for stem, title, keys, ylabel in PLOTS:
        fig, ax = plt.subplots(figsize=(9, 4), dpi=90)
        any_data = False
        for name in names:
            series = result.participants[name]["series"]
            for j, (key, style, scale) in enumerate(keys):
                ys = [None if v is None else float(v) * scale for v in series.get(key, [])]
                if not any(v is not None for v in ys):
                    continue
                any_data = True
                xs = [x for x, y in zip(t, ys, strict=False) if y is not None]
                ys2 = [y for y in ys if y is not None]
                ax.plot(xs, ys2, style, color=colors[name], label=name if j == 0 else None,
                        linewidth=1.3, drawstyle="steps-post" if "layer" in key else "default")
            if stem == "freezes":
                for fr in result.participants[name].get("freezes") or []:
                    ax.axvspan(fr["t"], fr["t"] + fr["ms"] / 1000.0, color=colors[name],
                               alpha=0.2)
        for ev in result.events:
            ax.axvline(ev["t"], color="grey", linestyle=":", linewidth=1)
            ax.annotate(f"{ev['participant']}: {ev['link']}"[:40], (ev["t"], 1.0),
                        xycoords=("data", "axes fraction"), fontsize=7, rotation=90,
                        va="top", ha="right", color="grey")
        if not any_data:
            ax.text(0.5, 0.5, "no data (not exposed by this Ferry / client)",
                    transform=ax.transAxes, ha="center", va="center", color="grey")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("time since start (s)")
        ax.set_ylabel(ylabel)
        if t:
            ax.set_xlim(0, max(t[-1], 1e-3))
        ax.grid(alpha=0.3)
        if any_data and len(names) <= 24:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        fig.tight_layout()
        path = out_dir / f"{stem}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


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
    ("layer_mean", "layer", "{:.1f}"),
]


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
        rows.append([name] + [_cell(p.get(k), f) for k, _, f in TABLE_COLUMNS])
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
