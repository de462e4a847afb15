# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Mirror container images into the internal registry with skopeo, pinned by digest.

skopeo is the better fit here than oras-py: it copies whole images and image indexes between registries,
selects one platform of an index (``--override-os/--override-arch``), keeps digests (``--preserve-digests``)
and reads the usual credential files. Credentials go through a private ``auth.json`` (mode 0600, deleted
afterwards), never through the command line where other users could read them in ``/proc``.

Each image is copied as ``src@<digest>``: an unpinned source is resolved once and then copied by that digest,
so what lands in the mirror is exactly what was inspected. With ``platforms="all"`` the mirror keeps the
upstream digest (index and all); with one platform it gets that platform's manifest, whose digest is the one
the upstream index lists for it. A destination that already holds the expected digest is left alone.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
from typing import Dict, List, Mapping, Optional, Sequence

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._oci_ref import Reference, RegistrySettings, is_loopback
from ansible_collections.pibake.image.plugins.module_utils._run import run

INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
DOCKER_HUB = "docker.io"


def normalize_source(text: str) -> Reference:
    """Docker-style names: ``alpine`` is ``docker.io/library/alpine:latest``."""
    raw = text.strip()
    if raw.startswith("docker://"):
        raw = raw[len("docker://"):]
    first = raw.split("/", 1)[0]
    has_registry = "/" in raw and ("." in first or ":" in first or first == "localhost")
    if not has_registry:
        raw = f"{DOCKER_HUB}/{raw}" if "/" in raw.split("@")[0].split(":")[0] else f"{DOCKER_HUB}/library/{raw}"
    ref = Reference.parse(raw)
    if not ref.tag and not ref.digest:
        ref = Reference(ref.registry, ref.repository, "latest", None)
    return ref


def plan(images: Sequence, settings: RegistrySettings) -> List[Dict[str, object]]:
    """``[{"src": Reference, "dest": Reference}]`` from strings or dicts (``src``/``image``/``name``/``ref``,
    optional ``dest``); the default destination keeps the source's path below the configured namespace."""
    out = []
    for item in images or []:
        if isinstance(item, str):
            src_text, dest_text = item, None
        elif isinstance(item, Mapping):
            src_text = item.get("src") or item.get("image") or item.get("name") or item.get("ref")
            dest_text = item.get("dest")
        else:
            raise PibakeError(f"Mirror entry {item!r} is neither an image name nor a dict with src; fix the list.")
        if not src_text:
            raise PibakeError(f"Mirror entry {item!r} has no src; give the upstream image.")
        src = normalize_source(str(src_text))
        if dest_text:
            dest = settings.reference(str(dest_text))
        else:
            if not settings.registry:
                raise PibakeError("No mirror registry is configured; set pibake_registry or PIBAKE_REGISTRY.")
            dest = settings.reference(src.repository)
        tag = dest.tag or src.tag or (f"sha256-{src.digest.split(':', 1)[1][:16]}" if src.digest else "latest")
        out.append({"src": src, "dest": Reference(dest.registry, dest.repository, tag, None)})
    return out


class Mirror:
    """Runs skopeo with a private auth file; ``skopeo_argv`` lets tests wrap skopeo (policy, temp dirs)."""

    def __init__(self, settings: RegistrySettings, *, src_username: Optional[str] = None,
                 src_password: Optional[str] = None, src_tls: Optional[bool] = None,
                 skopeo_argv: Sequence[str] = ("skopeo",), env: Optional[Mapping[str, str]] = None):
        self.settings = settings
        self.src_tls = src_tls
        self.skopeo_argv = list(skopeo_argv)
        self.env = dict(env) if env is not None else None
        self.tmp = tempfile.mkdtemp(prefix="pibake-mirror-")
        os.chmod(self.tmp, 0o700)
        self.authfile = os.path.join(self.tmp, "auth.json")
        self._src_creds = (src_username, src_password) if src_username and src_password else None
        self._write_auth()

    def _write_auth(self, src_host: Optional[str] = None) -> None:
        auths = {}
        if self._src_creds and src_host:
            auths[src_host] = {"auth": base64.b64encode(":".join(self._src_creds).encode()).decode()}
        if self.settings.username and self.settings.password and self.settings.registry:
            token = f"{self.settings.username}:{self.settings.password}"
            auths[self.settings.registry] = {"auth": base64.b64encode(token.encode()).decode()}
        fd = os.open(self.authfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"auths": auths}, fh)

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "Mirror":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _tls(self, host: str, dest: bool) -> str:
        if dest:
            verify = self.settings.uses_tls(host)
        else:
            verify = self.src_tls if self.src_tls is not None else not is_loopback(host)
        return "true" if verify else "false"

    def _skopeo(self, *args: str, what: str, check: bool = True):
        return run([*self.skopeo_argv, *args], env=self.env, check=check, what=what, timeout=3600)

    def raw_manifest(self, ref: Reference, dest: bool) -> Optional[bytes]:
        """Raw manifest bytes, or None when the tag/digest does not exist."""
        proc = self._skopeo("inspect", "--raw", "--authfile", self.authfile,
                            f"--tls-verify={self._tls(ref.registry, dest)}", f"docker://{ref}",
                            what=f"skopeo inspect {ref}", check=False)
        if proc.returncode == 0:
            return proc.stdout
        err = proc.stderr.decode(errors="replace")
        if "manifest unknown" in err or ("not found" in err.lower() and "no such host" not in err):
            return None
        low = err.lower()
        if "unauthorized" in low or "authentication required" in low or "401" in err:
            who = "destination" if dest else "source"
            fix = "PIBAKE_REGISTRY_USER/PIBAKE_REGISTRY_PASSWORD" if dest else "src_username/src_password"
            raise PibakeError(f"Registry {ref.registry} refused the {who} credentials (HTTP 401) for {ref}; "
                              f"check {fix}.")
        if "connection refused" in low or "no such host" in low or "i/o timeout" in low:
            raise PibakeError(f"Registry {ref.registry} is unreachable while inspecting {ref}; check that it is "
                              "running and the name is right.")
        tail = err.strip().splitlines()[-1] if err.strip() else f"exit code {proc.returncode}"
        raise PibakeError(f"skopeo could not inspect {ref}: {tail}")

    def manifest_digest(self, raw: bytes) -> str:
        path = os.path.join(self.tmp, "manifest.json")
        with open(path, "wb") as fh:
            fh.write(raw)
        try:
            proc = self._skopeo("manifest-digest", path, what="skopeo manifest-digest")
            return proc.stdout.decode().strip()
        except PibakeError:
            return "sha256:" + hashlib.sha256(raw).hexdigest()

    def resolve(self, src: Reference, platform: Optional[str]) -> Dict[str, object]:
        """Digest to copy from, and the digest the mirror will hold afterwards."""
        self._write_auth(src.registry)
        raw = self.raw_manifest(src, dest=False)
        if raw is None:
            raise PibakeError(f"{src} does not exist upstream; check the image name and tag.")
        top = self.manifest_digest(raw)
        if src.digest and top != src.digest:
            raise PibakeError(f"{src.registry} returned a manifest with digest {top} for {src}; refusing to mirror it.")
        manifest = json.loads(raw)
        is_index = manifest.get("mediaType") in INDEX_TYPES or "manifests" in manifest
        expected = top
        if platform:
            os_name, arch = platform.split("/")[:2]
            if is_index:
                hits = [m for m in manifest.get("manifests", [])
                        if (m.get("platform") or {}).get("os") == os_name
                        and (m.get("platform") or {}).get("architecture") == arch]
                if not hits:
                    raise PibakeError(f"{src} has no {platform} image; mirror all platforms or pick another image.")
                expected = hits[0]["digest"]
            else:
                cfg = self._skopeo("inspect", "--config", "--authfile", self.authfile,
                                   f"--tls-verify={self._tls(src.registry, False)}",
                                   f"docker://{src.with_digest(top)}", what=f"skopeo inspect --config {src}")
                conf = json.loads(cfg.stdout or b"{}")
                if conf.get("architecture") != arch or conf.get("os") != os_name:
                    raise PibakeError(
                        f"{src} is a single {conf.get('os')}/{conf.get('architecture')} image, not {platform}; "
                        "pick an image that has it."
                    )
        return {"top": top, "expected": expected, "is_index": is_index}

    def copy(self, src: Reference, dest: Reference, platform: Optional[str], check_mode: bool = False) -> dict:
        found = self.resolve(src, platform)
        pinned_src = src.with_digest(found["top"])
        current_raw = self.raw_manifest(dest, dest=True)
        current = self.manifest_digest(current_raw) if current_raw is not None else None
        result = {"src": str(src), "src_pinned": str(pinned_src), "dest": str(dest),
                  "digest": found["expected"], "pinned": str(dest.with_digest(found["expected"])),
                  "platforms": platform or "all", "changed": current != found["expected"]}
        if not result["changed"] or check_mode:
            return result
        digestfile = os.path.join(self.tmp, "digest")
        glob: List[str] = []  # global options go before the subcommand
        sub = ["copy", "--authfile", self.authfile, "--preserve-digests", "--digestfile", digestfile,
               f"--src-tls-verify={self._tls(src.registry, False)}",
               f"--dest-tls-verify={self._tls(dest.registry, True)}"]
        if platform is None:
            sub.append("--all")
        else:
            parts = platform.split("/")
            glob += ["--override-os", parts[0], "--override-arch", parts[1]]
            if len(parts) > 2:
                glob += ["--override-variant", parts[2]]
        self._skopeo(*glob, *sub, f"docker://{pinned_src}", f"docker://{dest}", what=f"skopeo copy {src} to {dest}")
        with open(digestfile, encoding="utf-8") as fh:
            written = fh.read().strip()
        if written != found["expected"]:
            raise PibakeError(f"The mirror of {src} has digest {written}, not the expected {found['expected']}; "
                              "the copy changed the image, check the destination registry.")
        return result


def mirror(images: Sequence, settings: RegistrySettings, *, platforms: str = "all",
           src_username: Optional[str] = None, src_password: Optional[str] = None, src_tls: Optional[bool] = None,
           check_mode: bool = False, skopeo_argv: Sequence[str] = ("skopeo",),
           env: Optional[Mapping[str, str]] = None) -> dict:
    """Mirror every entry of ``images``; ``platforms`` is ``all`` or one ``os/arch[/variant]``."""
    platform = None if platforms in (None, "", "all") else platforms
    if platform and len(platform.split("/")) < 2:
        raise PibakeError(f"Platform {platforms!r} is not all or os/arch such as linux/arm64; fix it.")
    entries = plan(images, settings)
    results = []
    with Mirror(settings, src_username=src_username, src_password=src_password, src_tls=src_tls,
                skopeo_argv=skopeo_argv, env=env) as tool:
        for entry in entries:
            results.append(tool.copy(entry["src"], entry["dest"], platform, check_mode=check_mode))
    return {"changed": any(r["changed"] for r in results), "images": results}
