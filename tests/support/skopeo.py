# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Run skopeo in tests with its policy, registries.d, temporary files and blob-info cache kept in a temp dir.

skopeo run as root keeps a blob-info cache under ``/var/lib/containers/cache``; no flag moves it. When we are
root and ``unshare`` is available, skopeo runs in a private mount namespace in which a private directory is
bind-mounted on ``/var/lib`` (skopeo reads nothing else there), so nothing is written on the host's
``/var/lib/containers``; the namespace and its mount vanish with the process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from typing import Dict, List, Optional, Sequence


class Skopeo:
    """``skopeo`` with a throw-away policy (insecureAcceptAnything), registries.d, TMPDIR and cache."""

    def __init__(self, workdir: Optional[str] = None):
        self._own = workdir is None
        self.dir = workdir or tempfile.mkdtemp(prefix="pibake-skopeo-")
        os.makedirs(self.dir, exist_ok=True)
        self.policy = os.path.join(self.dir, "policy.json")
        self.registries_d = os.path.join(self.dir, "registries.d")
        self.tmpdir = os.path.join(self.dir, "tmp")
        self.varlib = os.path.join(self.dir, "var-lib")
        for path in (self.registries_d, self.tmpdir, self.varlib):
            os.makedirs(path, exist_ok=True)
        with open(self.policy, "w", encoding="utf-8") as fh:
            json.dump({"default": [{"type": "insecureAcceptAnything"}]}, fh)
        self._isolate = os.geteuid() == 0 and shutil.which("unshare") is not None

    def env(self) -> Dict[str, str]:
        env = dict(os.environ)
        env.update({
            "TMPDIR": self.tmpdir,
            "XDG_RUNTIME_DIR": self.tmpdir,   # auth.json lookups stay here, never the host's
            "REGISTRY_AUTH_FILE": os.path.join(self.dir, "auth.json"),
            "HOME": self.dir,
        })
        return env

    def argv(self, args: Sequence[str]) -> List[str]:
        base = ["skopeo", "--policy", self.policy, "--registries.d", self.registries_d,
                "--tmpdir", self.tmpdir, *args]
        if not self._isolate:
            return base
        # private mount namespace: our own empty dir on /var/lib, so the blob-info cache lands in it
        script = 'mount --bind "$0" /var/lib && exec "$@"'
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, self.varlib, *base]

    def run(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.argv(args), env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"skopeo {' '.join(args[:1])} failed ({proc.returncode}): "
                               f"{proc.stderr.decode(errors='replace').strip()[-800:]}")
        return proc

    def inspect(self, ref: str, *, raw: bool = False, tls_verify: bool = False, creds: Optional[str] = None,
                config: bool = False, extra: Sequence[str] = ()) -> dict:
        """``skopeo inspect`` of ``docker://ref`` (or any transport when ref has one) parsed as JSON."""
        args = ["inspect"]
        if raw:
            args.append("--raw")
        if config:
            args.append("--config")
        if not ref.startswith(("docker://", "oci:", "dir:", "oci-archive:", "docker-archive:")):
            ref = "docker://" + ref
        if ref.startswith("docker://"):
            args.append(f"--tls-verify={'true' if tls_verify else 'false'}")
            if creds:
                args += ["--creds", creds]
        args += list(extra)
        return json.loads(self.run(*args, ref).stdout)

    def copy(self, src: str, dest: str, *, src_creds: Optional[str] = None, dest_creds: Optional[str] = None,
             tls_verify: bool = False, extra: Sequence[str] = ()) -> Optional[str]:
        """``skopeo copy src dest``; returns the written manifest digest (``--digestfile``)."""
        digestfile = os.path.join(self.tmpdir, f"digest-{os.getpid()}-{id(self)}-{len(os.listdir(self.tmpdir))}")
        args = ["copy", "--digestfile", digestfile]
        tls = f"{'true' if tls_verify else 'false'}"
        if src.startswith("docker://"):
            args.append(f"--src-tls-verify={tls}")
            if src_creds:
                args += ["--src-creds", src_creds]
        if dest.startswith("docker://"):
            args.append(f"--dest-tls-verify={tls}")
            if dest_creds:
                args += ["--dest-creds", dest_creds]
        args += [*extra, src, dest]
        self.run(*args)
        try:
            with open(digestfile, encoding="utf-8") as fh:
                return fh.read().strip() or None
        except OSError:
            return None
        finally:
            if os.path.exists(digestfile):
                os.unlink(digestfile)

    def close(self) -> None:
        if self._own:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Skopeo":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
