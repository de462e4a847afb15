# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Build small OCI container images without a Docker engine, and push them to a test registry.

The arm64 image holds ``/bin/busybox`` from Debian's ``busybox-static`` arm64 package plus applet symlinks;
the amd64 one (for multi-arch indexes) uses the host's ``busybox-static`` (``/bin/busybox``). Everything is
deterministic (mtime 0, uid 0, sorted entries), so the same inputs give the same digests.

    layout = build_image_layout(tmp / "bb", arch="arm64", extra_files={"etc/hello": b"hi\\n"})
    digest = push_layout(layout, registry.ref("mirror/busybox", "1"), skopeo)      # "sha256:..."
    index  = build_index_layout(tmp / "multi", arches=("arm64", "amd64"))

The .deb is cached in ``$PIBAKE_CACHE_DIR/test-assets`` (default ``~/.cache/pibake/test-assets``). It comes
from ``apt-get download busybox-static:arm64`` when dpkg knows the arm64 architecture, else straight from
the Debian mirror's pool, using the version the host's apt reports for the package.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from typing import Dict, Iterable, Optional, Sequence

MIRROR = os.environ.get("PIBAKE_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
APPLETS = ("sh", "ls", "cat", "echo", "true", "false", "uname", "sleep", "env", "id")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
CREATED = "2026-01-01T00:00:00Z"


def cache_dir() -> str:
    base = os.environ.get("PIBAKE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "pibake")
    path = os.path.join(base, "test-assets")
    os.makedirs(path, exist_ok=True)
    return path


def _host_busybox_version() -> str:
    out = subprocess.run(["apt-cache", "policy", "busybox-static"], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, check=True).stdout.decode()
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Candidate:") and "(none)" not in line:
            return line.split(":", 1)[1].strip()
    raise RuntimeError("apt-cache knows no busybox-static version; run apt-get update")


def _deb_arch(path: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", path, "Architecture"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, check=True).stdout.decode().strip()


def busybox_deb(arch: str = "arm64") -> str:
    """Path of a cached ``busybox-static_<ver>_<arch>.deb``, downloading it once."""
    cache = cache_dir()
    for name in sorted(os.listdir(cache)):
        if name.startswith("busybox-static_") and name.endswith(f"_{arch}.deb"):
            return os.path.join(cache, name)
    tmp = tempfile.mkdtemp(prefix=".busybox-", dir=cache)
    try:
        foreign = subprocess.run(["dpkg", "--print-foreign-architectures"], stdout=subprocess.PIPE,
                                 check=False).stdout.decode().split()
        got = None
        if arch in foreign:
            proc = subprocess.run(["apt-get", "download", f"busybox-static:{arch}"], cwd=tmp,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
            debs = [n for n in os.listdir(tmp) if n.endswith(".deb")]
            if proc.returncode == 0 and debs:
                got = os.path.join(tmp, debs[0])
        if got is None:
            version = _host_busybox_version().split(":", 1)[-1]  # the pool file name drops the epoch
            name = f"busybox-static_{version}_{arch}.deb"
            got = os.path.join(tmp, name)
            with urllib.request.urlopen(f"{MIRROR}/pool/main/b/busybox/{name}", timeout=60) as resp, \
                    open(got, "wb") as fh:
                shutil.copyfileobj(resp, fh)
        if _deb_arch(got) != arch:
            raise RuntimeError(f"{got} is not an {arch} package")
        final = os.path.join(cache, os.path.basename(got))
        os.replace(got, final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def busybox_binary(arch: str = "arm64") -> bytes:
    """The static busybox executable for ``arch`` (from the cached .deb, or the host's for its own arch)."""
    host_arch = subprocess.run(["dpkg", "--print-architecture"], stdout=subprocess.PIPE,
                               check=True).stdout.decode().strip()
    if arch == host_arch and os.path.exists("/bin/busybox"):
        with open("/bin/busybox", "rb") as fh:
            return fh.read()
    deb = busybox_deb(arch)
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], stdout=subprocess.PIPE, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            if member.name.lstrip("./") == "bin/busybox" and member.isfile():
                return tar.extractfile(member).read()
    raise RuntimeError(f"{deb} holds no bin/busybox")


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(busybox: bytes, extra_files: Optional[Dict[str, bytes]] = None,
              applets: Iterable[str] = APPLETS) -> bytes:
    """Uncompressed, deterministic tar: bin/busybox, bin/<applet> -> busybox, extra files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add_dir(name: str) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)

        def add_file(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))

        dirs = {"bin", "tmp"}
        for path in (extra_files or {}):
            parts = path.strip("/").split("/")[:-1]
            dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        for name in sorted(dirs):
            add_dir(name)
        add_file("bin/busybox", busybox, 0o755)
        for applet in sorted(applets):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, "busybox", 0o777, 0
            tar.addfile(info)
        for path, data in sorted((extra_files or {}).items()):
            add_file(path.strip("/"), data)
    return buf.getvalue()


class _Layout:
    """Writes blobs into an OCI image layout directory."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.join(path, "blobs", "sha256"), exist_ok=True)
        with open(os.path.join(path, "oci-layout"), "w", encoding="utf-8") as fh:
            json.dump({"imageLayoutVersion": "1.0.0"}, fh)

    def blob(self, data: bytes, media_type: str) -> dict:
        digest = _sha(data)
        with open(os.path.join(self.path, "blobs", "sha256", digest.split(":", 1)[1]), "wb") as fh:
            fh.write(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def image(self, arch: str, extra_files: Optional[Dict[str, bytes]], cmd: Sequence[str]) -> dict:
        tar = layer_tar(busybox_binary(arch), extra_files)
        gz = io.BytesIO()
        with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0, compresslevel=6) as zf:
            zf.write(tar)
        layer = self.blob(gz.getvalue(), OCI_LAYER_GZIP)
        config = {
            "created": CREATED,
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": list(cmd), "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [_sha(tar)]},
            "history": [{"created": CREATED, "created_by": "pibake tests: busybox-static layer"}],
        }
        cfg = self.blob(json.dumps(config, sort_keys=True).encode(), OCI_CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg, "layers": [layer]}
        desc = self.blob(json.dumps(manifest, sort_keys=True).encode(), OCI_MANIFEST)
        desc["platform"] = {"architecture": arch, "os": "linux"}
        return desc

    def index(self, desc: dict, ref_name: str) -> None:
        entry = dict(desc)
        entry.pop("platform", None) if desc["mediaType"] == OCI_MANIFEST else None
        entry["annotations"] = {"org.opencontainers.image.ref.name": ref_name}
        with open(os.path.join(self.path, "index.json"), "w", encoding="utf-8") as fh:
            json.dump({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}, fh)


def build_image_layout(dest: str, arch: str = "arm64", extra_files: Optional[Dict[str, bytes]] = None,
                       cmd: Sequence[str] = ("/bin/sh",), ref_name: str = "latest") -> str:
    """Write a single-arch OCI layout at ``dest``; returns ``oci:<dest>:<ref_name>``."""
    layout = _Layout(dest)
    layout.index(layout.image(arch, extra_files, cmd), ref_name)
    return f"oci:{dest}:{ref_name}"


def build_index_layout(dest: str, arches: Sequence[str] = ("arm64", "amd64"),
                       extra_files: Optional[Dict[str, bytes]] = None, cmd: Sequence[str] = ("/bin/sh",),
                       ref_name: str = "latest") -> str:
    """Write a multi-arch OCI layout (image index, one manifest per arch); returns ``oci:<dest>:<ref>``."""
    layout = _Layout(dest)
    manifests = [layout.image(arch, extra_files, cmd) for arch in arches]
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    layout.index(layout.blob(json.dumps(index, sort_keys=True).encode(), OCI_INDEX), ref_name)
    return f"oci:{dest}:{ref_name}"


def push_layout(src: str, dest_ref: str, skopeo, creds: Optional[str] = None) -> str:
    """Push ``oci:...`` to ``docker://dest_ref`` keeping digests; returns the manifest digest ``sha256:...``."""
    digest = skopeo.copy(src, f"docker://{dest_ref}", dest_creds=creds,
                         extra=["--all", "--preserve-digests"])
    if not digest:
        raise RuntimeError(f"skopeo wrote no digest for {dest_ref}")
    return digest


def pinned(dest_ref: str, digest: str) -> str:
    """``host:port/repo@sha256:...`` from ``host:port/repo:tag`` and a digest."""
    repo = dest_ref.rsplit("@", 1)[0]
    last = repo.rsplit("/", 1)
    if ":" in last[-1]:
        repo = repo[: repo.rfind(":")]
    return f"{repo}@{digest}"
