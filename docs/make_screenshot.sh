#!/usr/bin/env bash
# Screenshot of a report's headline (its header and Summary: verdict, the three key figures,
# baseline against the exported model) for the README, in Debian's headless Chromium.
#
#   bash docs/make_screenshot.sh exports/NAME/report.html            # writes docs/report-headline.png
#   bash docs/make_screenshot.sh exports/NAME/report.html out.png    # or any other PNG
#
# Needs `chromium` (apt-get install -y chromium). The window is the crop: WIDTH x HEIGHT pixels
# from the top of the page (default 1100 x 900; override with SHOT_WIDTH / SHOT_HEIGHT when a
# report's summary is taller). Nothing is fetched: the report is self-contained.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
  echo "usage: bash docs/make_screenshot.sh REPORT.html [OUT.png]" >&2
  exit 2
fi
report="$1"
here="$(cd "$(dirname "$0")" && pwd)"
out="${2:-$here/report-headline.png}"
width="${SHOT_WIDTH:-1100}"
height="${SHOT_HEIGHT:-900}"

if [[ ! -f "$report" ]]; then
  echo "error: no such report: $report (autosculpt report NAME --out FILE.html writes one)" >&2
  exit 2
fi
browser="$(command -v chromium || true)"
if [[ -z "$browser" ]]; then
  echo "error: chromium is not installed (apt-get install -y chromium)" >&2
  exit 2
fi

url="file://$(cd "$(dirname "$report")" && pwd)/$(basename "$report")"
out_abs="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT

"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
  --no-first-run --disable-component-update --disable-sync --hide-scrollbars \
  --user-data-dir="$profile" --virtual-time-budget=5000 \
  --window-size="$width,$height" --screenshot="$out_abs" "$url" >/dev/null 2>&1

if [[ ! -s "$out_abs" ]]; then
  echo "error: chromium wrote no screenshot to $out_abs" >&2
  exit 1
fi
echo "wrote $out_abs (${width}x${height}, the top of $report)"
