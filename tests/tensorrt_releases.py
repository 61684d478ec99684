"""The real TensorRT Python bindings of several versions, loadable on a machine with no GPU.

PyPI serves the bindings wheels (``tensorrt*-bindings``, about 1.3 MB each) as real wheels, but the
libraries they link (``libnvinfer`` ...) only through NVIDIA's own index, which CI cannot reach.
The bindings only call into those libraries when an object is created (a builder, a runtime), so
a stub library that defines their few C entry points (returning NULL, or the version) lets the real
module import: every class, enum, method and property is TensorRT's own. Nothing can be built or
run with it; it answers "does this version have that API", which is what the tests ask.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "tensorrt-bindings"
PROBE = Path(__file__).with_name("tensorrt_api_probe.py")
SYSTEM_SYMBOLS = {"dlopen", "dlsym", "dlclose", "dlerror"}


class NoWheelHere(RuntimeError):
    """PyPI has no bindings wheel of that release for this Python / platform."""


@dataclass(frozen=True)
class Release:
    version: str
    package: str
    where: str

    @property
    def encoded(self) -> int:
        major, minor, patch = (int(p) for p in self.version.split(".")[:3])
        return major * 10000 + minor * 100 + patch


RELEASES = [
    Release("8.6.1", "tensorrt-bindings", "the 8.x API of Jetson Xavier (JetPack 5.1 ships 8.5)"),
    Release("10.3.0", "tensorrt-cu12-bindings", "JetPack 6.1/6.2's own TensorRT"),
    Release("10.7.0", "tensorrt-cu12-bindings", "both deploy/ images: NGC tensorrt:24.12, L4T tarball"),
    Release("11.4.0.106", "tensorrt-cu13-bindings", "current pip release"),
]


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]


def _fetch(release: Release, into: Path) -> Path:
    wheels = into / "wheel"
    found = sorted(wheels.glob("*.whl"))
    if not found:
        result = _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                       "-d", str(wheels), f"{release.package}=={release.version}"])
        found = sorted(wheels.glob("*.whl"))
        offline = any(sign in result.stderr for sign in ("NewConnectionError", "Failed to establish", "timed out"))
        if not found and "No matching distribution" in result.stderr and not offline:
            raise NoWheelHere(f"PyPI has no {release.package}=={release.version} wheel for Python "
                              f"{sys.version_info.major}.{sys.version_info.minor} on this platform")
        if not found:
            raise RuntimeError(f"pip could not download {release.package}=={release.version}: {result.stderr[-800:]}")
    site = into / "site"
    if not (site / "tensorrt_bindings").is_dir():
        with zipfile.ZipFile(found[0]) as wheel:
            wheel.extractall(site)
    return site


def _stub_libraries(release: Release, site: Path, into: Path) -> Path:
    """One stub that defines every entry point the bindings import, saved under each NEEDED name."""
    stubs = into / "stubs"
    module = site / "tensorrt_bindings" / "tensorrt.so"
    if stubs.is_dir() and any(stubs.iterdir()):
        return stubs
    symbols = _run(["nm", "-D", "--undefined-only", str(module)]).stdout.split("\n")
    names = sorted({line.split()[-1] for line in symbols if line.strip().startswith("U ")
                    and "@" not in line and not line.split()[-1].lstrip("_").startswith("Py")}
                   - SYSTEM_SYMBOLS)
    lines = []
    for i, name in enumerate(names):
        if name.endswith("Version"):
            lines.append(f'int s{i}(void) __asm__("{name}"); int s{i}(void) {{ return {release.encoded}; }}')
        else:
            lines.append(f'void *s{i}(void) __asm__("{name}"); void *s{i}(void) {{ return 0; }}')
    needed = [line.split("[")[1].rstrip("]") for line in _run(["readelf", "-d", str(module)]).stdout.splitlines()
              if "(NEEDED)" in line and "libnv" in line]
    stubs.mkdir(parents=True, exist_ok=True)
    source = stubs / "stub.c"
    source.write_text("\n".join(lines) + "\n")
    for soname in needed:
        result = _run(["cc", "-shared", "-fPIC", "-o", str(stubs / soname), str(source), f"-Wl,-soname,{soname}"])
        if result.returncode != 0:
            raise RuntimeError(f"cc could not build the stub {soname}: {result.stderr}")
    return stubs


def probe(release: Release, required: list[str]) -> dict[str, object]:
    """Load ``release``'s real bindings in a child process and ask the probe about ``required``."""
    into = CACHE / f"{release.version}-cp{sys.version_info.major}{sys.version_info.minor}"
    site = _fetch(release, into)
    stubs = _stub_libraries(release, site, into)
    env = dict(os.environ, LD_LIBRARY_PATH=str(stubs), PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))
    result = _run([sys.executable, str(PROBE)], input=json.dumps(required), env=env, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"TensorRT {release.version} bindings did not load: {result.stderr[-1500:]}")
    answer: dict[str, object] = json.loads(result.stdout)
    return answer
