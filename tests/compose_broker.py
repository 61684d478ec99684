"""The compose broker on this machine: compose/mosquitto/{mosquitto.conf,acl} as they are, the password
file and health login made by the real compose/make-passwords.sh, TLS material by the real
compose/make-certs.sh, and only paths and ports rewritten (two loopback ports for 1883 and 8883).

Run as root (as the tests are here), the broker runs as uid 1883, the container's user, and its
secret files are mode 0600 owned by 1883 as the scripts leave them: so it proves the broker can read
what the scripts make. Run as another user, that user stands in for 1883.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from mqtt_bus import BrokerSettings
from mqtt_bus.local_broker import free_port, mosquitto_binary, wait_listening
from tests.conftest import ROOT

COMPOSE = ROOT / "compose"
CONTAINER_UID = 1883  # the eclipse-mosquitto image's mosquitto user; docker-compose.yml: user "1883:1883"
PASSWORDS = {"controller": "ctl-secret", "registry": "reg-secret"}
AGENTS = {"cam1": "cam1-secret", "cam2": "cam2-secret"}


def broker_ids() -> tuple[int, int]:
    """The uid/gid the broker runs as here: the container's if we can switch to it, else our own."""
    return (CONTAINER_UID, CONTAINER_UID) if os.geteuid() == 0 else (os.getuid(), os.getgid())


def as_broker_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to run the broker as uid 1883"
    uid, gid = broker_ids()
    return [setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *argv]


def rewrite(text: str, old: str, new: str) -> str:
    """Replace ``old`` (which must be there: a config that drifted from what the test rewrites fails)."""
    assert old in text, f"compose/mosquitto/mosquitto.conf no longer has {old!r}"
    return text.replace(old, new)


class ComposeBroker:
    def __init__(self) -> None:
        # Not pytest's tmp_path: its parent is mode 0700 root, which uid 1883 cannot enter.
        self.dir = Path(tempfile.mkdtemp(prefix="edgebatch-compose-"))
        uid, gid = broker_ids()
        os.chown(self.dir, uid, gid)
        self.internal_port, self.tls_port = free_port(), free_port()
        self.host = "127.0.0.1"
        self.process: subprocess.Popen[bytes] | None = None
        self._make_files()
        self.config = self._write_config()

    def _make_files(self) -> None:
        uid, gid = broker_ids()
        ids = {"BROKER_UID": str(uid), "BROKER_GID": str(gid), "CONTROLLER_UID": str(os.getuid()),
               "CONTROLLER_GID": str(os.getgid())}
        env_file, agents_file = self.dir / "env", self.dir / "agents.txt"
        env_file.write_text(f"CONTROLLER_MQTT_PASSWORD={PASSWORDS['controller']}\n"
                            f"REGISTRY_MQTT_PASSWORD={PASSWORDS['registry']}\nHTTP_TOKEN=tok-9f27c41e\n")
        agents_file.write_text("".join(f"{a} {p}\n" for a, p in AGENTS.items()))
        env = {**os.environ, **ids, "ENV_FILE": str(env_file), "AGENTS_FILE": str(agents_file),
               "MOSQUITTO_DIR": str(self.dir), "SECRETS_DIR": str(self.dir / "secrets")}
        subprocess.run(["bash", str(COMPOSE / "make-passwords.sh")], env=env, check=True, capture_output=True)
        env = {**os.environ, **ids, "CERTS_DIR": str(self.dir / "certs"), "CA_DIR": str(self.dir / "ca")}
        subprocess.run(["bash", str(COMPOSE / "make-certs.sh"), "broker.example"], env=env, check=True,
                       capture_output=True)
        # What compose mounts: the acl as it is in the repository, the health login at /mosquitto/health.
        shutil.copyfile(COMPOSE / "mosquitto" / "acl", self.dir / "acl")
        (self.dir / "acl").chmod(0o644)
        health = self.dir / "health"
        health.mkdir()
        shutil.copy2(self.dir / "secrets" / "mosquitto_sub", health / "mosquitto_sub")
        os.chown(health / "mosquitto_sub", uid, gid)
        os.chown(health, uid, gid)
        (self.dir / "data").mkdir()
        os.chown(self.dir / "data", uid, gid)

    def _write_config(self) -> Path:
        text = (COMPOSE / "mosquitto" / "mosquitto.conf").read_text()
        for old, new in (("/mosquitto/config/passwd", str(self.dir / "passwd")),
                         ("/mosquitto/config/acl", str(self.dir / "acl")),
                         ("/mosquitto/data/", f"{self.dir / 'data'}/"),
                         ("/mosquitto/certs/", f"{self.dir / 'certs'}/"),
                         ("listener 1883\n", f"listener {self.internal_port} 127.0.0.1\n"),
                         ("listener 8883\n", f"listener {self.tls_port} 127.0.0.1\n")):
            text = rewrite(text, old, new)
        config = self.dir / "mosquitto.conf"
        config.write_text(text)
        config.chmod(0o644)
        return config

    @property
    def ca_file(self) -> str:
        return str(self.dir / "certs" / "ca.crt")

    def internal(self, user: str | None, password: str | None = None) -> BrokerSettings:
        """Settings for the plaintext listener (1883 in compose: controller replicas, health check)."""
        return BrokerSettings(self.host, self.internal_port, username=user,
                              password=password if password is not None else PASSWORDS.get(user or ""))

    def tls(self, user: str | None, password: str | None = None, ca_file: str | None = None) -> BrokerSettings:
        """Settings for the TLS listener (8883 in compose: agents, the registry CLI). The certificate is
        for "localhost" among others, which is what the client checks the name against."""
        return BrokerSettings("localhost", self.tls_port, username=user, tls=True, ca_file=ca_file or self.ca_file,
                              password=password if password is not None else {**PASSWORDS, **AGENTS}.get(user or ""))

    def start(self, timeout_s: float = 10.0) -> ComposeBroker:
        log = (self.dir / "mosquitto.log").open("ab")
        self.process = subprocess.Popen(as_broker_user([mosquitto_binary(), "-c", str(self.config)]),
                                        stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            for port in (self.internal_port, self.tls_port):
                wait_listening(self.host, port, self.process, timeout_s)
        except RuntimeError as exc:
            self.kill()
            raise RuntimeError(f"mosquitto {exc}; its log:\n{self.log()}") from None
        return self

    def log(self) -> str:
        path = self.dir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no orderly save on the way out."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
