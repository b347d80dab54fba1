"""How fast an attrscope HTML report opens in headless Chromium, and a screenshot of its top.

For each report, over ``--repeats`` fresh pages: the time until the page answers (the first
animation frame after DOMContentLoaded: the dashboard is drawn and clicks are handled), until
plotly.js has loaded, and until every figure is drawn (``body[data-figures=drawn]``). Console
errors are printed. ``--screenshot PATH`` saves the top of the first report at the viewport
size (default 1400 x 900).

Usage:
    attrscope compare --out attrscope-report
    python benchmarks/report_open_time.py attrscope-report/report.html --screenshot top.png
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ANSWERS = ("new Promise(r => requestAnimationFrame(() => setTimeout(() => "
           "r(performance.now()), 0)))")
PLOTLY = ("new Promise(r => { const t = () => typeof Plotly !== 'undefined' ? "
          "r(performance.now()) : setTimeout(t, 5); t(); })")
DRAWN = ("new Promise(r => { const t = () => document.body.dataset.figures === 'drawn' ? "
         "r(performance.now()) : setTimeout(t, 20); t(); })")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--screenshot", type=Path)
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox",
                                                                     "--disable-gpu"])
        for i, report in enumerate(args.reports):
            times: dict[str, list[float]] = {"answers": [], "plotly loaded": [],
                                              "all figures drawn": []}
            for repeat in range(args.repeats):
                page = browser.new_page(viewport={"width": args.width, "height": args.height})
                errors: list[str] = []
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                started = time.perf_counter()
                page.goto(report.resolve().as_uri(), wait_until="domcontentloaded")
                times["answers"].append(page.evaluate(ANSWERS) / 1000)
                times["plotly loaded"].append(page.evaluate(PLOTLY) / 1000)
                times["all figures drawn"].append(page.evaluate(DRAWN) / 1000)
                if i == 0 and repeat == 0 and args.screenshot:
                    page.evaluate("window.scrollTo(0, 0)")
                    page.screenshot(path=str(args.screenshot))
                page.close()
                if errors:
                    print(f"{report}: console errors: {errors}")
            size = report.stat().st_size / 1e6
            print(f"{report} ({size:.1f} MB, {time.perf_counter() - started:.1f} s last open): "
                  + ", ".join(f"{k} {statistics.median(v):.2f} s (median of {len(v)})"
                              for k, v in times.items()))
        browser.close()


if __name__ == "__main__":
    main()
