#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: mosquitto (the MQTT broker) and .venv with the project.
set -euo pipefail
cd "$(dirname "$0")/.."

# mosquitto-clients: the compose broker's health check (mosquitto_sub) runs in tests/test_compose.py;
# openssl: compose/make-certs.sh.
if { ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; } \
    || ! command -v mosquitto_sub >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; then
  echo "setup: installing mosquitto, mosquitto-clients, openssl ..." >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto mosquitto-clients openssl >/dev/null
fi

# chromium: tests/test_fleet_page.py looks at the fleet page in a real headless browser. Large, and not
# needed to run anything: a machine where apt cannot install it goes on (that test then skips in CI).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  echo "setup: installing chromium (headless browser for the fleet page's test) ..." >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  { $SUDO apt-get update -qq >/dev/null \
      && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null; } \
    || echo "setup: chromium could not be installed; the fleet page's browser test will skip in CI" >&2
fi

# tests/test_cameras.py serves RTSP on loopback with GStreamer's RTSP server, run by the system Python
# (tests/rtsp_server.py): its bindings and the plugins of the served pipeline (videotestsrc, jpegenc, rtpjpegpay).
gst_check="import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0')
from gi.repository import Gst; Gst.init(None)
assert all(Gst.ElementFactory.find(e) for e in ('videotestsrc', 'jpegenc', 'rtpjpegpay'))"
if ! /usr/bin/python3 -c "$gst_check" >/dev/null 2>&1; then
  echo "setup: installing GStreamer's RTSP server (for the camera tests) ..." >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-gi \
    gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv ..." >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.edgebatch-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing edgebatch and its dependencies into .venv ..." >&2
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  log=.venv/install.log
  if ! .venv/bin/python -m pip install -q -e ".[test,dev]" >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" >&2
    echo "setup: pip install failed (full log in $log)" >&2
    exit 1
  fi
  .venv/bin/python -c "import edge_agent, aiomqtt, onnxruntime, cv2, gridfs"
  touch "$stamp"
fi

# promtool, from Debian's prometheus package unpacked into .venv/bin (not installed: no service, nothing
# else from it): tests/test_metrics_config.py checks compose/prometheus/prometheus.yml and the dashboard's
# queries with it (a Go binary that needs only libc).
if ! command -v promtool >/dev/null 2>&1 && [ ! -x .venv/bin/promtool ]; then
  echo "setup: fetching promtool (Debian's prometheus package) ..." >&2
  tmp=$(mktemp -d)
  if ! (cd "$tmp" && apt-get download -qq prometheus >/dev/null 2>&1); then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq >/dev/null
    (cd "$tmp" && apt-get download -qq prometheus >/dev/null)
  fi
  dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -C "$tmp" ./usr/bin/promtool
  install -m 755 "$tmp/usr/bin/promtool" .venv/bin/promtool
  rm -rf "$tmp"
fi
