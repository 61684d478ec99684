"""Where video decode saturates: N streams, one decoder each on its own thread (as the pipeline reads them),
decoding the sample video as fast as they can; total frames/s by N.

The pipeline reads each stream on a thread of its read pool and never decodes on the event loop, so this is
the ceiling decode puts on it. Prints frames/s, per-stream frames/s and the speed-up over one stream.
"""

from __future__ import annotations

import argparse
import json
import platform
import threading
import time
from pathlib import Path

import psutil

from edge_agent.sources import VideoSource

VIDEO = Path(__file__).resolve().parent.parent / "samples/video/vtest.avi"


def decode(streams: int, seconds: float) -> float:
    sources = [VideoSource(str(VIDEO), f"s{i}", loop=True) for i in range(streams)]
    for s in sources:
        s.open()
    counts = [0] * streams
    stop = threading.Event()

    def read(i: int) -> None:
        while not stop.is_set():
            if sources[i].read() is not None:
                counts[i] += 1

    threads = [threading.Thread(target=read, args=(i,)) for i in range(streams)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    for s in sources:
        s.close()
    return sum(counts) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", default="1,2,4,8,16,32")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for n in [int(s) for s in args.streams.split(",")]:
        fps = decode(n, args.seconds)
        rows.append({"streams": n, "fps": round(fps, 1), "fps_per_stream": round(fps / n, 1),
                     "speedup_over_one": round(fps / rows[0]["fps"], 2) if rows else 1.0})
        print(f"{n:3d} streams: {fps:8.1f} frames/s ({fps / n:7.1f} each)", flush=True)
    result = {"machine": f"{platform.machine()} {psutil.cpu_count()} cores", "video": VIDEO.name, "rows": rows}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
