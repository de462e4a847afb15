# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Start Debian's ``docker-registry`` (distribution v2) on 127.0.0.1 for tests.

    with LocalRegistry() as reg:                      # anonymous
        reg.address  -> "127.0.0.1:40123"
    with LocalRegistry(auth=("alice", "s3cret")) as reg:   # htpasswd (bcrypt) auth
        ...
    reg.stop(); reg.start()                           # same port, same storage: simulates an outage

Each instance owns a fresh temporary directory (config, storage, htpasswd, log) that is removed on close.
bcrypt entries come from ``htpasswd -B`` (Debian package apache2-utils) when it is installed, else from the
python ``bcrypt`` module, else from the C library's crypt(3) (libxcrypt on Debian 12 supports ``$2b$``).
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from typing import Optional, Tuple

REGISTRY_BIN = "/usr/bin/docker-registry"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bcrypt_entry(user: str, password: str) -> str:
    """One htpasswd line ``user:$2y$...`` with a bcrypt hash (the only kind docker-registry accepts)."""
    if shutil.which("htpasswd"):
        out = subprocess.run(
            ["htpasswd", "-nbB", "-C", "5", user, password],
            check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        ).stdout.decode().strip()
        return out.splitlines()[0]
    try:
        import bcrypt  # type: ignore

        return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()}"
    except ImportError:
        pass
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # pylint: disable=deprecated-module

    salt = "$2b$05$" + base64.b64encode(os.urandom(16), b"./").decode()[:22]
    hashed = crypt.crypt(password, salt)
    if not hashed or not hashed.startswith("$2b$"):
        raise RuntimeError("no bcrypt implementation: install apache2-utils (htpasswd) or python bcrypt")
    return f"{user}:{hashed}"


class LocalRegistry:
    """A docker-registry process on 127.0.0.1 with its own storage; a context manager."""

    def __init__(self, auth: Optional[Tuple[str, str]] = None, port: Optional[int] = None,
                 startup_timeout: float = 20.0):
        if not os.path.exists(REGISTRY_BIN):
            raise RuntimeError(f"{REGISTRY_BIN} missing: apt-get install docker-registry")
        self.auth = auth
        self.username = auth[0] if auth else None
        self.password = auth[1] if auth else None
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.startup_timeout = startup_timeout
        self.tmp = tempfile.mkdtemp(prefix="pibake-registry-")
        self.storage = os.path.join(self.tmp, "storage")
        self.config = os.path.join(self.tmp, "config.yml")
        self.log_path = os.path.join(self.tmp, "registry.log")
        self.proc: Optional[subprocess.Popen] = None
        os.makedirs(self.storage)
        self._write_config()

    # -- addresses -------------------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, the registry part of an image reference."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def ref(self, repo: str, tag_or_digest: str = "latest") -> str:
        """``127.0.0.1:PORT/repo:tag`` or ``...@sha256:...``."""
        sep = "@" if tag_or_digest.startswith("sha256:") else ":"
        return f"{self.address}/{repo}{sep}{tag_or_digest}"

    def creds(self) -> Optional[str]:
        """``user:password`` for ``skopeo --creds``, or None for an anonymous registry."""
        return f"{self.username}:{self.password}" if self.auth else None

    # -- life cycle ------------------------------------------------------------------------------------------
    def _write_config(self) -> None:
        lines = [
            "version: 0.1",
            "log:",
            "  level: warn",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.storage}",
            "  delete:",
            "    enabled: true",
            "  maintenance:",
            "    uploadpurging:",
            "      enabled: false",
            "http:",
            f"  addr: {self.address}",
            f"  secret: {base64.b16encode(os.urandom(16)).decode()}",
        ]
        if self.auth:
            htpasswd = os.path.join(self.tmp, "htpasswd")
            with open(htpasswd, "w", encoding="utf-8") as fh:
                fh.write(bcrypt_entry(self.username, self.password) + "\n")
            lines += ["auth:", "  htpasswd:", "    realm: pibake-test", f"    path: {htpasswd}"]
        with open(self.config, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> "LocalRegistry":
        """Start (or restart after stop()) on the same port and storage; wait until ``/v2/`` answers."""
        if self.running():
            return self
        log = open(self.log_path, "ab")  # pylint: disable=consider-using-with
        try:
            self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
                [REGISTRY_BIN, "serve", self.config],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=self.tmp,
            )
        finally:
            log.close()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited with {self.proc.returncode}: {self.log_tail()}")
            if self.answers():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"docker-registry did not answer /v2/ within {self.startup_timeout} s: {self.log_tail()}")

    def answers(self) -> bool:
        """True when ``GET /v2/`` gets an HTTP answer (200, or 401 with auth)."""
        try:
            with urllib.request.urlopen(f"{self.url}/v2/", timeout=1) as resp:
                return resp.status == 200
        except urllib.error.HTTPError as err:
            return err.code == 401
        except (urllib.error.URLError, ConnectionError, socket.timeout, OSError):
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop the process we started (only that pid); storage stays until close()."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crash or a pulled network cable would."""
        self.stop(sig=signal.SIGKILL)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def log_tail(self, lines: int = 5) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                return " | ".join(fh.read().decode(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> "LocalRegistry":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()
