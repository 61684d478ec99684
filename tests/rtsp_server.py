"""A real RTSP server on loopback for the camera tests: GStreamer's (gst-rtsp-server, what DeepStream's samples
serve with), a live test pattern as MJPEG over RTP, any number of clients.

Run as a script it is the server (``python3 tests/rtsp_server.py PORT``), under the system Python, which has
GStreamer's bindings (python3-gi, gir1.2-gst-rtsp-server-1.0; ``scripts/setup.sh`` installs them). Imported,
``RtspServer`` starts it in a subprocess, kills it (a camera losing power) and starts it again on the same port.
ffmpeg cannot stand in: ``-rtsp_flags listen`` is an option of its RTSP *input* (it receives a publisher's
stream); as an output it only pushes to a server.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

MOUNT = "/cam"
PIPELINE = ("( videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width=320,height=240,framerate=10/1"
            " ! jpegenc ! rtpjpegpay name=pay0 pt=26 )")  # rtpjpegpay takes 4:2:0 only
SYSTEM_PYTHONS = ("/usr/bin/python3",)


class RtspServerMissing(RuntimeError):
    """No GStreamer RTSP server for the system Python (scripts/setup.sh installs it)."""


def gstreamer_python() -> str:
    """A Python that can import GStreamer's RTSP server bindings, or RtspServerMissing saying what to install."""
    probe = "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"
    candidates = [os.environ.get("EDGEBATCH_GST_PYTHON", ""), *SYSTEM_PYTHONS, shutil.which("python3") or ""]
    for python in dict.fromkeys(c for c in candidates if c):
        if subprocess.run([python, "-c", probe], capture_output=True).returncode == 0:
            return python
    raise RtspServerMissing("no Python with GStreamer's RTSP server: apt-get install python3-gi "
                            "gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
                            "(scripts/setup.sh does), or set EDGEBATCH_GST_PYTHON")


class RtspServer:
    """``rtsp://127.0.0.1:PORT/cam`` while started; ``kill()`` and ``start()`` again for an outage."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"rtsp://127.0.0.1:{port}{MOUNT}"
        self._python = gstreamer_python()
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 20.0) -> RtspServer:
        assert self._process is None, "already started"
        self._process = subprocess.Popen([self._python, __file__, str(self.port)], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                self._process = None
                raise RuntimeError(f"RTSP server on port {self.port} exited: {err[-1000:]}")
            with socket.socket() as s:
                s.settimeout(0.2)
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"RTSP server on port {self.port} did not listen within {timeout_s} s")

    def kill(self) -> None:
        """SIGKILL: no TEARDOWN, sockets just close (a camera losing power, a crashed server)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(10)
            if self._process.stderr is not None:
                self._process.stderr.close()
            self._process = None

    def __enter__(self) -> RtspServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def serve(port: str) -> None:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(PIPELINE)
    factory.set_shared(True)
    server.get_mount_points().add_factory(MOUNT, factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{port}")
    GLib.MainLoop().run()


if __name__ == "__main__":
    serve(sys.argv[1])
