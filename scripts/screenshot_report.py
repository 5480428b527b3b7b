"""Screenshot a run's HTML report in headless Chromium: ``python scripts/screenshot_report.py RUN_DIR OUT.png``.

Renders ``RUN_DIR/eval/report.html`` (written after every iteration of ``selfplay loop``) with Debian's
``chromium`` driven by Playwright (``pip install -e '.[dev]'``; no browser download: ``--browser`` names the
executable, default ``/usr/bin/chromium``). ``--open`` unfolds the samples of the first N sections so the
picture shows them; ``--full-page`` captures the whole page instead of one window of ``--width`` x ``--height``.
The README's screenshot is taken this way from the quickstart:

    python scripts/screenshot_report.py runs/quickstart docs/report.png --open 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def screenshot(report: Path, out: Path, *, browser: str, width: int, height: int, open_sections: int,
               full_page: bool) -> list[str]:
    """Save the screenshot; returns the console errors the page logged (none expected)."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=browser, args=["--no-sandbox"])
        pg = b.new_page(viewport={"width": width, "height": height})
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(report.resolve().as_uri())
        # Unfold the sample browsers of the first sections (base, iteration 0, ...) and their first steps.
        pg.evaluate("""n => {
            const sections = [...document.querySelectorAll('main > section')].slice(1, 1 + n);
            for (const s of sections) s.querySelectorAll('details').forEach(d => d.open = true);
        }""", open_sections)
        out.parent.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(out), full_page=full_page)
        b.close()
    return errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--browser", default="/usr/bin/chromium")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=1600)
    ap.add_argument("--open", type=int, default=0, dest="open_sections",
                    help="unfold every block of the first N model sections (base, iteration 0, ...)")
    ap.add_argument("--full-page", action="store_true")
    args = ap.parse_args()
    report = args.run_dir / "eval" / "report.html"
    if not report.is_file():
        print(f"{report}: not found (selfplay loop writes it after every iteration)", file=sys.stderr)
        return 2
    if not Path(args.browser).is_file():
        print(f"{args.browser}: no such browser (apt-get install chromium, or --browser PATH)", file=sys.stderr)
        return 2
    errors = screenshot(report, args.out, browser=args.browser, width=args.width, height=args.height,
                        open_sections=args.open_sections, full_page=args.full_page)
    for e in errors:
        print(f"console error: {e}", file=sys.stderr)
    print(args.out)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
