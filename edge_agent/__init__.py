"""edgebatch edge agent: the device-side pipeline, engines, probes, swap and MQTT I/O."""

import os

# FFmpeg's own log lines would clutter the one-line errors the CLI promises.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
