#!/usr/bin/env bash
# Builds the docs site, serves it on localhost and takes headless Chromium
# screenshots of the home page and a guide, for a person to look at.
#   scripts/docs_screenshot.sh [OUT_DIR]      (default: site-screenshots/)
# Needs Chromium (Debian/Ubuntu: apt-get install chromium).
source "$(dirname "$0")/env.sh"
cd "$REPO"
out="$(realpath -m "${1:-site-screenshots}")"
browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
[ -n "$browser" ] || { echo "error: no Chromium found: install it (apt-get install chromium)." >&2; exit 2; }
site="$(mktemp -d)"
profile="$(mktemp -d)"
server=
trap 'kill $server 2>/dev/null; rm -rf "$site" "$profile"' EXIT
NO_MKDOCS_2_WARNING=1 mkdocs build --strict -q -d "$site"
port="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
python -m http.server "$port" --bind 127.0.0.1 --directory "$site" >/dev/null 2>&1 &
server=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
mkdir -p "$out"
for page in "" guides/train/ reference/config/; do
  name="$(echo "${page:-index}" | tr / - | sed 's/-$//')"
  # The flags keep Chromium off the network it would otherwise call at start.
  "$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --hide-scrollbars --window-size=1280,1000 \
    --screenshot="$out/$name.png" "http://127.0.0.1:$port/$page" >/dev/null 2>&1
  echo "$out/$name.png"
done
