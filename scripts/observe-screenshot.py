#!/usr/bin/env python3
"""Static rendering of the chart's Grafana dashboard over recorded metrics.

Grafana is not needed: the recorded series (OpenMetrics with timestamps, as written by
`UAMI_OBSERVE_RECORD=<file> cargo test --test deploy_observe after_the_tutorial`) are loaded into
a local Prometheus (`promtool tsdb create-blocks-from openmetrics`), every panel's query is
evaluated by that Prometheus over the recorded time range, and matplotlib draws the panels at
their dashboard positions in Grafana's dark colours.

Needs `prometheus` and `promtool` on PATH (Debian: apt-get install prometheus) and matplotlib
(pip install matplotlib). Usage:

    scripts/observe-screenshot.py RECORDING.om DASHBOARD.json OUT.png
"""

import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from datetime import datetime

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

BG = "#111217"
PANEL = "#181b1f"
BORDER = "#2c3235"
TEXT = "#ccccdc"
DIM = "#8e8e9e"
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9",
           "#37872d", "#fade2a", "#ff9830", "#ca95e5", "#96d98d"]
NAMED = {"green": "#73bf69", "red": "#f2495c", "orange": "#ff9830", "blue": "#5794f2",
         "yellow": "#fade2a"}
RATE_INTERVAL = "15s"


def recorded_range(path):
    lo, hi = None, None
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            t = float(line.rsplit(" ", 1)[1])
            lo = t if lo is None else min(lo, t)
            hi = t if hi is None else max(hi, t)
    return lo, hi


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    def __init__(self, recording):
        self.dir = tempfile.mkdtemp(prefix="uami-observe-")
        tsdb = f"{self.dir}/tsdb"
        subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", recording, tsdb],
                       check=True, stdout=subprocess.DEVNULL)
        config = f"{self.dir}/prometheus.yml"
        with open(config, "w") as f:
            f.write("global: {}\n")
        self.url = f"http://127.0.0.1:{free_port()}"
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tsdb}",
             "--storage.tsdb.retention.time=100y",
             # The recording has a sample every second and no staleness markers: a series
             # that stopped (a condition that changed) must vanish as it would have.
             "--query.lookback-delta=3s",
             f"--web.listen-address={self.url.removeprefix('http://')}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        self.close()
        raise SystemExit("prometheus did not become ready")

    def query(self, expr, at):
        return self._get("query", {"query": expr, "time": at})

    def query_range(self, expr, start, end, step=1):
        return self._get("query_range", {"query": expr, "start": start, "end": end, "step": step})

    def _get(self, what, params):
        url = f"{self.url}/api/v1/{what}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=30) as r:
            body = json.load(r)
        if body["status"] != "success":
            raise SystemExit(f"{params['query']}: {body}")
        return body["data"]["result"]

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def legend(fmt, metric):
    if not fmt:
        return ", ".join(f"{k}={v}" for k, v in metric.items() if k != "__name__")
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt)


def duration(seconds):
    s = abs(seconds)
    sign = "-" if seconds < 0 else ""
    if s < 120:
        return f"{sign}{s:.0f} s"
    if s < 7200:
        return f"{sign}{s / 60:.0f} min"
    if s < 172800:
        return f"{sign}{s / 3600:.1f} h"
    return f"{sign}{s / 86400:.1f} days"


def fmt_value(v, unit):
    if unit == "s":
        return duration(v)
    if unit == "reqps":
        return f"{v:.2f} req/s"
    return f"{v:g}" if abs(v) < 1e6 else f"{v:.3g}"


def threshold_color(steps, v):
    color = None
    for s in steps:
        if s["value"] is None or v >= s["value"]:
            color = s["color"]
    return NAMED.get(color, color or TEXT)


def draw_frame(fig, rect, title):
    ax = fig.add_axes(rect)
    ax.set_facecolor(PANEL)
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_color(BORDER)
    ax.text(0.012, 0.985, title, transform=ax.transAxes, va="top", ha="left", color=TEXT,
            fontsize=9, fontweight="bold")
    return ax


def inner(rect, top=0.09, bottom=0.04, left=0.02, right=0.02):
    x, y, w, h = rect
    return [x + w * left, y + h * bottom, w * (1 - left - right), h * (1 - top - bottom)]


def timeseries(fig, rect, panel, prom, t0, t1):
    ax = fig.add_axes(inner(rect, top=0.12, bottom=0.30, left=0.07))
    ax.set_facecolor(PANEL)
    unit = panel["fieldConfig"]["defaults"].get("unit", "")
    n = 0
    for t in panel["targets"]:
        expr = t["expr"].replace("$__rate_interval", RATE_INTERVAL)
        for series in prom.query_range(expr, t0, t1):
            xs = [datetime.fromtimestamp(float(p[0])) for p in series["values"]]
            ys = [float(p[1]) for p in series["values"]]
            ax.plot(xs, ys, lw=1.2, color=PALETTE[n % len(PALETTE)],
                    label=legend(t.get("legendFormat"), series["metric"]))
            ax.fill_between(xs, ys, alpha=0.08, color=PALETTE[n % len(PALETTE)])
            n += 1
    ax.set_xlim(datetime.fromtimestamp(t0), datetime.fromtimestamp(t1))
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    ax.tick_params(colors=DIM, labelsize=6.5)
    ax.grid(color=BORDER, lw=0.5)
    for s in ax.spines.values():
        s.set_visible(False)
    if unit == "reqps":
        ax.set_ylabel("req/s", color=DIM, fontsize=7)
    if n == 0:
        ax.text(0.5, 0.5, "No data", transform=ax.transAxes, ha="center", color=DIM)
    else:
        ax.legend(loc="upper left", bbox_to_anchor=(0, -0.14), ncol=3, fontsize=6,
                  frameon=False, labelcolor=TEXT, handlelength=1.2, columnspacing=1.0)


def bargauge(fig, rect, panel, prom, t1):
    rows = []
    for t in panel["targets"]:
        for s in prom.query(t["expr"], t1):
            rows.append((legend(t.get("legendFormat"), s["metric"]), float(s["value"][1])))
    rows.sort()
    overrides = panel["fieldConfig"].get("overrides", [])
    ax = fig.add_axes(inner(rect, top=0.12, left=0.02, right=0.04))
    ax.set_facecolor(PANEL)
    ax.axis("off")
    top = max([v for _, v in rows] + [1])
    for i, (label, v) in enumerate(rows):
        color = NAMED["blue"]
        for o in overrides:
            if re.fullmatch(o["matcher"]["options"], label):
                color = NAMED.get(o["properties"][0]["value"]["fixedColor"], color)
        y = len(rows) - i - 1
        ax.text(0, y + 0.45, label, color=TEXT, fontsize=7, va="bottom")
        ax.barh(y + 0.15, top, height=0.3, color=BORDER, left=0)
        ax.barh(y + 0.15, v, height=0.3, color=color, left=0)
        ax.text(top * 1.01, y + 0.15, f"{v:g}", color=color, fontsize=9, va="center",
                fontweight="bold")
    ax.set_xlim(0, top * 1.08)
    ax.set_ylim(-0.2, max(len(rows), 1))


def stat(fig, rect, panel, prom, t1):
    d = panel["fieldConfig"]["defaults"]
    result = prom.query(panel["targets"][0]["expr"], t1)
    v = float(result[0]["value"][1]) if result else None
    text, color = "No data", DIM
    if v is not None:
        color = threshold_color(d["thresholds"]["steps"], v)
        text = f"{v:g}"
        for m in d.get("mappings", []):
            hit = m["options"].get(f"{v:g}")
            if hit:
                text = hit.get("text", text)
                color = NAMED.get(hit.get("color"), color)
    ax = fig.add_axes(inner(rect, top=0.12, bottom=0.06, left=0.06, right=0.06))
    ax.axis("off")
    ax.add_patch(FancyBboxPatch((0, 0), 1, 1, boxstyle="round,pad=0,rounding_size=0.03",
                                transform=ax.transAxes, color=color, alpha=0.9))
    ax.text(0.5, 0.55, text, transform=ax.transAxes, ha="center", va="center", color="white",
            fontsize=18, fontweight="bold")
    legend_text = panel["targets"][0].get("legendFormat", "")
    ax.text(0.5, 0.25, legend_text, transform=ax.transAxes, ha="center", color="white",
            fontsize=7)


def table(fig, rect, panel, prom, t1):
    org = next((t["options"] for t in panel.get("transformations", [])
                if t["id"] == "organize"), {})
    order = sorted(org.get("indexByName", {}), key=lambda k: org["indexByName"][k])
    rename = org.get("renameByName", {})
    unit = panel["fieldConfig"]["defaults"].get("unit", "")
    value_name = "Value"
    value_props = {}
    for o in panel["fieldConfig"].get("overrides", []):
        if o["matcher"]["options"] == "Value":
            for p in o["properties"]:
                value_props[p["id"]] = p["value"]
    value_name = value_props.get("displayName", value_name)
    rows = []
    for t in panel["targets"]:
        for s in prom.query(t["expr"], t1):
            rows.append({**s["metric"], "Value": float(s["value"][1])})
    cols = [c for c in order if c == "Value" or any(c in r for r in rows)]
    sort = panel.get("options", {}).get("sortBy", [])
    if sort:
        rows.sort(key=lambda r: r["Value"], reverse=sort[0].get("desc", False))
    ax = fig.add_axes(inner(rect, top=0.11, bottom=0.02, left=0.015, right=0.015))
    ax.axis("off")
    n = max(len(rows), 1) + 1
    widths = [1.0 if c != "Value" else 0.8 for c in cols]
    if "name" in cols:
        widths[cols.index("name")] = 1.8
    if "reason" in cols:
        widths[cols.index("reason")] = 1.4
    if "resource" in cols:
        widths[cols.index("resource")] = 1.9
    total = sum(widths)
    xs = [sum(widths[:i]) / total for i in range(len(cols))]
    row_h = min(1 / n, 0.12)
    for x, c in zip(xs, cols):
        label = value_name if c == "Value" else rename.get(c, c)
        ax.text(x, 1 - row_h / 2, label, color=NAMED["blue"], fontsize=7.5, va="center",
                fontweight="bold", transform=ax.transAxes)
    ax.plot([0, 1], [1 - row_h, 1 - row_h], color=BORDER, lw=0.8, transform=ax.transAxes)
    for i, r in enumerate(rows):
        y = 1 - row_h * (i + 1.5)
        for x, c in zip(xs, cols):
            if c == "Value":
                text = fmt_value(r["Value"], value_props.get("unit", unit))
                color = TEXT
                if "thresholds" in value_props:
                    color = threshold_color(value_props["thresholds"]["steps"], r["Value"])
            else:
                text, color = r.get(c, ""), TEXT
            ax.text(x, y, text, color=color, fontsize=7, va="center", transform=ax.transAxes)
    if not rows:
        ax.text(0.5, 0.5, "No data", transform=ax.transAxes, ha="center", color=DIM)


def main():
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    recording, dashboard_path, out = sys.argv[1:]
    dashboard = json.load(open(dashboard_path))
    t0, t1 = recorded_range(recording)
    t0 = float(int(t0) + 1)
    t1 = float(int(t1))
    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    width_px, unit_px, header_px = 1500, 30, 56
    height_px = rows * unit_px + header_px + 26
    dpi = 100
    fig = plt.figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, facecolor=BG)
    started = datetime.fromtimestamp(t0).strftime("%Y-%m-%d %H:%M:%S")
    fig.text(0.008, 1 - 22 / height_px, f"{dashboard['title']}", color=TEXT, fontsize=13,
             fontweight="bold", va="center")
    fig.text(0.008, 1 - 44 / height_px,
             f"Static rendering of every panel's query, evaluated by Prometheus over metrics "
             f"recorded during a tutorial run ({started}, {int(t1 - t0)} s; "
             f"$__rate_interval = {RATE_INTERVAL}). Not a Grafana screenshot.",
             color=DIM, fontsize=8, va="center")
    prom = Prometheus(recording)
    try:
        gap = 4
        for p in panels:
            g = p["gridPos"]
            x = g["x"] * width_px / 24 + gap
            w = g["w"] * width_px / 24 - 2 * gap
            top = header_px + g["y"] * unit_px + gap
            h = g["h"] * unit_px - 2 * gap
            rect = [x / width_px, 1 - (top + h) / height_px, w / width_px, h / height_px]
            draw_frame(fig, rect, p["title"])
            kind = p["type"]
            if kind == "timeseries":
                timeseries(fig, rect, p, prom, t0, t1)
            elif kind == "bargauge":
                bargauge(fig, rect, p, prom, t1)
            elif kind == "stat":
                stat(fig, rect, p, prom, t1)
            elif kind == "table":
                table(fig, rect, p, prom, t1)
            else:
                raise SystemExit(f"panel type {kind} is not rendered")
    finally:
        prom.close()
    fig.savefig(out, dpi=dpi, facecolor=BG)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
