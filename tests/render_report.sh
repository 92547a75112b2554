#!/usr/bin/env bash
# Render a report.html in headless Chromium (Debian's `chromium` package) and save a screenshot,
# to check by eye that the self-contained page shows its tables and every picture:
#   tests/render_report.sh egoscale-demo/report/report.html report.png [WIDTH,HEIGHT]
# tests/test_report_render.py runs it and checks the screenshot; it is skipped where Chromium is
# not installed (apt-get install chromium).
set -euo pipefail
html="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
png="$2"
size="${3:-1200,6000}"
browser="$(command -v chromium || command -v chromium-browser || true)"
[ -n "$browser" ] || { echo "no chromium on PATH (apt-get install chromium)" >&2; exit 3; }
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --allow-file-access-from-files \
    --window-size="$size" --screenshot="$png" "file://$html" >/dev/null 2>&1
test -s "$png"
