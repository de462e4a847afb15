# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Publish a ``deploy/`` folder to an OCI registry and pull it back, in two forms.

* **image form** (the OurBox seed's): an OCI image whose single uncompressed tar layer holds
  ``/artifact/<file>`` for every file of ``deploy/``, with a standard image config, so ``docker pull``,
  ``podman pull`` and ``nerdctl pull`` work and ``docker cp`` gets the files out. It is pushed as an image index
  with one manifest per platform (default ``linux/amd64`` and ``linux/arm64``) sharing the same layer blob, so
  each engine finds its own platform and pulls without warnings.
* **artifact form** (ORAS style): one manifest with ``artifactType`` ``application/vnd.pibake.os-image.v1``, the
  empty config, and each file its own blob with a media type and an ``org.opencontainers.image.title``
  annotation (``oras pull`` restores the files by name). The SBOM and the checksum files are also *attached*
  to both forms as referrer manifests (``subject``); on registries without the referrers API the OCI 1.1
  fallback tag ``sha256-<digest>`` holds the referrers index.

Manifest annotations come from ``deploy/os.info`` (KEY=VALUE lines): version, variant, profile, base image and
its digest, git revision, creation time; explicit values override. The manifests are deterministic (no clock),
so publishing the same folder twice changes nothing.

Pulling accepts a tag or a digest, detects the form, streams every blob while hashing it, rejects any blob
whose digest or size differs, checks ``*.sha256`` files it brought along, and writes into a temporary folder
next to the destination that is renamed into place only when everything is verified.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import os
import platform as host_platform
import posixpath
import re
import shutil
import tarfile
import tempfile
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._oci_blob import (
    BlobSource, bytes_source, file_source, tar_source)
from ansible_collections.pibake.image.plugins.module_utils._oci_client import (
    MIB, BlobReader, Progress, RegistryClient)
from ansible_collections.pibake.image.plugins.module_utils._oci_ref import Reference, RegistrySettings
from ansible_collections.pibake.image.plugins.module_utils._sparse import write_sparse

try:  # the build's own os.info parser; a plain KEY=VALUE reader below stands in when it is absent
    from ansible_collections.pibake.image.plugins.module_utils._release_info import parse as parse_release
except ImportError:  # pragma: no cover
    parse_release = None

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
ARTIFACT_TYPE = "application/vnd.pibake.os-image.v1"
CHECKSUMS_TYPE = "application/vnd.pibake.checksums.v1"
TITLE = "org.opencontainers.image.title"
FILES_ANNOTATION = "dev.pibake.image.files"
IMAGE_LAYER_TYPES = (OCI_LAYER_TAR, "application/vnd.oci.image.layer.v1.tar+gzip",
                     "application/vnd.docker.image.rootfs.diff.tar.gzip",
                     "application/vnd.docker.image.rootfs.diff.tar")
DEFAULT_PLATFORMS = ("linux/amd64", "linux/arm64")
ARTIFACT_SUFFIX = "-artifact"

# (name ending, media type); first match wins
MEDIA_TYPES = (
    (".img.xz", "application/vnd.pibake.disk-image.raw.v1+xz"),
    (".img.zst", "application/vnd.pibake.disk-image.raw.v1+zstd"),
    (".img.gz", "application/vnd.pibake.disk-image.raw.v1+gzip"),
    (".img", "application/vnd.pibake.disk-image.raw.v1"),
    (".bmap", "application/vnd.pibake.bmap.v1+xml"),
    (".cdx.json", "application/vnd.cyclonedx+json"),
    (".cyclonedx.json", "application/vnd.cyclonedx+json"),
    (".spdx.json", "application/spdx+json"),
    (".sha256", "application/vnd.pibake.checksums.v1+text"),
    ("sha256sums", "application/vnd.pibake.checksums.v1+text"),
    ("os.info", "application/vnd.pibake.os-info.v1+text"),
    (".log", "text/plain"),
    (".txt", "text/plain"),
    (".json", "application/json"),
    (".xz", "application/x-xz"),
)

# annotation -> os.info keys that may carry it (first present wins; a common prefix like OURBOX_ is ignored)
INFO_KEYS = {
    "org.opencontainers.image.version": ("VERSION", "IMAGE_VERSION"),
    "org.opencontainers.image.created": ("BUILD_TIME", "CREATED", "BUILD_DATE", "BUILT_AT"),
    "org.opencontainers.image.revision": ("GIT_REVISION", "GIT_COMMIT", "GIT_SHA", "REVISION"),
    "org.opencontainers.image.base.name": ("BASE_IMAGE",),
    "org.opencontainers.image.base.digest": ("BASE_IMAGE_SHA256", "BASE_IMAGE_DIGEST", "BASE_SHA256"),
    "dev.pibake.image.variant": ("VARIANT",),
    "dev.pibake.image.profile": ("PROFILE",),
    "dev.pibake.image.name": ("NAME",),
    "dev.pibake.image.sku": ("SKU",),
    "dev.pibake.image.pibake-version": ("PIBAKE_VERSION",),
}
# friendly option names -> annotation keys
FRIENDLY = {
    "version": "org.opencontainers.image.version",
    "created": "org.opencontainers.image.created",
    "git_revision": "org.opencontainers.image.revision",
    "base_image": "org.opencontainers.image.base.name",
    "base_image_digest": "org.opencontainers.image.base.digest",
    "variant": "dev.pibake.image.variant",
    "profile": "dev.pibake.image.profile",
}


# -- deploy folder --------------------------------------------------------------------------------------------
def media_type_for(name: str) -> str:
    lower = name.lower()
    for ending, media_type in MEDIA_TYPES:
        if lower.endswith(ending):
            return media_type
    return "application/octet-stream"


def is_sbom(name: str) -> bool:
    lower = name.lower()
    return lower.endswith((".cdx.json", ".cyclonedx.json", ".spdx.json")) or (
        "sbom" in lower and lower.endswith(".json"))


def is_checksums(name: str) -> bool:
    lower = name.lower()
    return lower.endswith((".sha256", ".sha256sum")) or lower in ("sha256sums", "sha256sums.txt")


def deploy_files(deploy_dir: str) -> List[Tuple[str, str]]:
    """Sorted ``(name, path)`` of the regular files at the top of ``deploy_dir`` (hidden ones skipped)."""
    if not os.path.isdir(deploy_dir):
        raise PibakeError(f"Deploy folder {deploy_dir} does not exist; build an image first or fix deploy_dir.")
    files = []
    for name in sorted(os.listdir(deploy_dir)):
        path = os.path.join(deploy_dir, name)
        if name.startswith(".") or not os.path.isfile(path) or os.path.islink(path):
            continue
        files.append((name, path))
    if not files:
        raise PibakeError(f"Deploy folder {deploy_dir} holds no files; build an image first.")
    return files


# Files every release carries besides those named after its image (<stem>.*).
RELEASE_SHARED_FILES = ("os.info", "build.log", "rpi-imager.json", "os_list_local.json", "sha256sums")


def release_files(deploy_dir: str) -> Tuple[List[Tuple[str, str]], List[str]]:
    """The files of the release ``os.info`` describes, and the names of the other files left out.

    A deploy folder is shared by builds (as pi-gen's is): after building two profiles it holds both images but
    only the last build's os.info, build.log and manifests. Publishing it whole would ship a release whose
    metadata describes one image of two. The release is the image os.info names (``IMAGE``), the files named
    after it (``<stem>.*``) and the shared release files; without an ``IMAGE`` present, every file is.
    """
    files = deploy_files(deploy_dir)
    image = os.path.basename(read_os_info(os.path.join(deploy_dir, "os.info")).get("IMAGE", ""))
    if ".img" not in image or image not in {entry for entry, dummy_path in files}:
        return files, []
    stem = image[:image.index(".img")]
    kept = [(entry, path) for entry, path in files if entry.startswith(f"{stem}.") or entry in RELEASE_SHARED_FILES]
    return kept, sorted({entry for entry, dummy_path in files} - {entry for entry, dummy_path in kept})


def read_os_info(path: str) -> Dict[str, str]:
    """KEY=VALUE lines of ``os.info`` (quotes removed); an absent file gives ``{}``."""
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    try:
        if parse_release is None:
            raise PibakeError("no release parser")
        return dict(parse_release(text))
    except PibakeError:
        values = {}
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, value = line.split("=", 1)
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            values[key.strip()] = value
        return values


def _info_lookup(info: Mapping[str, str], names: Sequence[str]) -> Optional[str]:
    upper = {k.upper(): v for k, v in info.items()}
    for name in names:
        if upper.get(name):
            return upper[name]
    for name in names:  # PREFIX_NAME (e.g. OURBOX_VERSION)
        hits = [v for k, v in upper.items() if k.endswith("_" + name) and v]
        if len(hits) == 1:
            return hits[0]
    return None


def _rfc3339(value: str) -> str:
    """Normalize a time string to RFC 3339 UTC when it is a recognisable form; else return it unchanged."""
    value = value.strip()
    if value.isdigit():
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(value)))
    for fmt in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"):
        try:
            parsed = time.strptime(value.replace("+00:00", "Z") if fmt.endswith("Z") else value, fmt)
        except ValueError:
            continue
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", parsed)
    return value


def _epoch(created: str) -> int:
    try:
        return calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return 0


def build_annotations(deploy_dir: str, files: Sequence[Tuple[str, str]],
                      overrides: Optional[Mapping[str, object]] = None,
                      defaults: Optional[Mapping[str, object]] = None) -> Dict[str, str]:
    """Manifest annotations from ``os.info`` and ``overrides`` (friendly names or full annotation keys);
    ``defaults`` fill only keys still missing.

    The creation time falls back to the newest file's mtime (not the clock) so that manifests stay stable.
    """
    info = read_os_info(os.path.join(deploy_dir, "os.info"))
    annotations: Dict[str, str] = {}
    for key, names in INFO_KEYS.items():
        value = _info_lookup(info, names)
        if value:
            annotations[key] = value
    for key, value in (overrides or {}).items():
        if value in (None, ""):
            continue
        annotations[FRIENDLY.get(key, key)] = str(value)
    for key, value in (defaults or {}).items():
        if value not in (None, ""):
            annotations.setdefault(FRIENDLY.get(key, key), str(value))
    created = annotations.get("org.opencontainers.image.created")
    if created:
        annotations["org.opencontainers.image.created"] = _rfc3339(created)
    else:
        newest = max(int(os.stat(path).st_mtime) for dummy_name, path in files)
        annotations["org.opencontainers.image.created"] = _rfc3339(str(newest))
    digest = annotations.get("org.opencontainers.image.base.digest")
    if digest and ":" not in digest and len(digest) == 64:
        annotations["org.opencontainers.image.base.digest"] = "sha256:" + digest
    return annotations


def defaults_from_os_info(deploy_dir: str) -> Dict[str, Optional[str]]:
    """Repository and tag to use when none is given: ``NAME`` and ``VERSION[-VARIANT]`` of ``os.info``."""
    info = read_os_info(os.path.join(deploy_dir, "os.info"))
    name = _info_lookup(info, ("NAME",))
    version = _info_lookup(info, ("VERSION",))
    variant = _info_lookup(info, ("VARIANT",))
    repository = None
    if name:
        repository = re.sub(r"[^a-z0-9._/-]+", "-", name.lower()).strip("-./_") or None
    tag = None
    if version:
        tag = version if not variant or variant in version else f"{version}-{variant}"
        tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", tag).lstrip(".-")[:128] or None
    return {"repository": repository, "tag": tag}


# -- manifests ------------------------------------------------------------------------------------------------
def canonical(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def descriptor(media_type: str, source: BlobSource, annotations: Optional[dict] = None, **extra) -> dict:
    desc = {"mediaType": media_type, "digest": source.digest, "size": source.size}
    desc.update(extra)
    if annotations:
        desc["annotations"] = dict(annotations)
    return desc


def _platform(text: str) -> Dict[str, str]:
    parts = text.strip().split("/")
    if len(parts) < 2 or not all(parts):
        raise PibakeError(f"Platform {text!r} is not os/arch[/variant]; write it like linux/arm64.")
    plat = {"os": parts[0], "architecture": parts[1]}
    if len(parts) > 2:
        plat["variant"] = parts[2]
    elif parts[1] == "arm64":
        plat["variant"] = "v8"
    return plat


class Plan:
    """Everything publish() sends, computed before any network access (digests included)."""

    def __init__(self, files: List[Tuple[str, str]], annotations: Mapping[str, str], platforms: Sequence[str],
                 with_image: bool = True):
        self.files = files
        self.annotations = dict(annotations)
        created = self.annotations["org.opencontainers.image.created"]
        self.sources: Dict[str, BlobSource] = {name: file_source(path) for name, path in self.files}
        self.layer = tar_source(self.files, "artifact", mtime=_epoch(created), label="image layer (tar)")
        self.empty = bytes_source(b"{}", "empty config")
        self.configs: List[BlobSource] = []
        self.manifests: List[Tuple[str, bytes, str]] = []  # (role, raw, media type) in upload order
        self.image_raw, self.image_type = b"", OCI_MANIFEST
        if with_image:  # hashing the tar stream also hashes every file: one pass for both forms
            self._build_image_form(platforms, created)
        self._build_artifact_form()

    # image form: index -> one manifest per platform, shared tar layer
    def _build_image_form(self, platforms: Sequence[str], created: str) -> None:
        dummy_digest = self.layer.digest  # computing it also fills layer.file_digests
        file_digests = {name: self.layer.file_digests[path] for name, path in self.files}
        for name, path in self.files:  # reuse the hashes for the artifact blobs
            self.sources[name]._digest = self.layer.file_digests[path]  # pylint: disable=protected-access
        layer_desc = descriptor(OCI_LAYER_TAR, self.layer,
                                {FILES_ANNOTATION: json.dumps(file_digests, sort_keys=True, separators=(",", ":"))})
        labels = dict(self.annotations)
        entries = []
        configs = []
        for text in platforms:
            plat = _platform(text)
            config = {
                "architecture": plat["architecture"], "os": plat["os"], "created": created,
                "config": {"Labels": labels, "WorkingDir": "/artifact", "Cmd": ["true"]},
                "rootfs": {"type": "layers", "diff_ids": [self.layer.digest]},
                "history": [{"created": created, "created_by": "pibake.image oci_publish: /artifact files"}],
            }
            if "variant" in plat:
                config["variant"] = plat["variant"]
            cfg = bytes_source(canonical(config), f"image config {text}")
            configs.append(cfg)
            manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, cfg),
                        "layers": [layer_desc], "annotations": self.annotations}
            raw = canonical(manifest)
            entries.append({"mediaType": OCI_MANIFEST, "digest": "sha256:" + hashlib.sha256(raw).hexdigest(),
                            "size": len(raw), "platform": plat})
            self.manifests.append((f"image {text}", raw, OCI_MANIFEST))
        if len(platforms) == 1:
            self.image_raw, self.image_type = self.manifests[-1][1], OCI_MANIFEST
        else:
            index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries,
                     "annotations": self.annotations}
            self.image_raw, self.image_type = canonical(index), OCI_INDEX
            self.manifests.append(("image index", self.image_raw, OCI_INDEX))
        self.configs = configs

    def _build_artifact_form(self) -> None:
        self.layer_descs = {}
        for name, dummy_path in self.files:
            self.layer_descs[name] = descriptor(media_type_for(name), self.sources[name], {TITLE: name})
        manifest = {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": ARTIFACT_TYPE,
            "config": descriptor(EMPTY_MEDIA_TYPE, self.empty),
            "layers": [self.layer_descs[name] for name, dummy_path in self.files],
            "annotations": self.annotations,
        }
        self.artifact_raw = canonical(manifest)
        self.manifests.append(("artifact", self.artifact_raw, OCI_MANIFEST))

    def referrers(self, subject_raw: bytes, subject_type: str) -> List[Tuple[str, bytes, str]]:
        """Referrer manifests attaching the SBOM(s) and the checksum files to ``subject``."""
        subject = {"mediaType": subject_type, "digest": "sha256:" + hashlib.sha256(subject_raw).hexdigest(),
                   "size": len(subject_raw)}
        created = {"org.opencontainers.image.created": self.annotations["org.opencontainers.image.created"]}
        out = []
        for name, dummy_path in self.files:
            if is_sbom(name):
                manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                            "artifactType": media_type_for(name),
                            "config": descriptor(EMPTY_MEDIA_TYPE, self.empty),
                            "layers": [self.layer_descs[name]], "subject": subject, "annotations": created}
                out.append((f"sbom {name}", canonical(manifest), media_type_for(name)))
        sums = [name for name, dummy_path in self.files if is_checksums(name)]
        if sums:
            manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": CHECKSUMS_TYPE,
                        "config": descriptor(EMPTY_MEDIA_TYPE, self.empty),
                        "layers": [self.layer_descs[n] for n in sums], "subject": subject, "annotations": created}
            out.append(("checksums", canonical(manifest), CHECKSUMS_TYPE))
        return out


def _digest(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def default_state_dir() -> str:
    base = os.environ.get("PIBAKE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "pibake")
    return os.path.join(base, "oci-uploads")


# -- publish --------------------------------------------------------------------------------------------------
def publish(deploy_dir: str, settings: RegistrySettings, repository: str, tag: str, *,
            forms: Sequence[str] = ("image", "artifact"), artifact_suffix: str = ARTIFACT_SUFFIX,
            extra_tags: Sequence[str] = (), platforms: Sequence[str] = DEFAULT_PLATFORMS,
            annotations: Optional[Mapping[str, object]] = None,
            annotation_defaults: Optional[Mapping[str, object]] = None, attach: bool = True,
            state_dir: Optional[str] = None, check_mode: bool = False, progress: Progress = None) -> dict:
    """Push ``deploy_dir`` as the image form and/or the artifact form; see the module docs for the result."""
    forms = list(dict.fromkeys(forms))
    unknown = [f for f in forms if f not in ("image", "artifact")]
    if unknown or not forms:
        raise PibakeError(f"Unknown publish form(s) {unknown or forms}; use image, artifact or both.")
    if not platforms:
        raise PibakeError("The image form needs at least one platform such as linux/arm64.")
    started = time.monotonic()
    base = settings.reference(f"{repository}:{tag}")
    if base.digest:
        raise PibakeError("Publish needs a tag, not a digest; give repository and tag.")
    tags = [base.tag] + [t for t in extra_tags if t and t != base.tag]
    for extra in tags:
        Reference.parse(f"{base.name}:{extra}")  # validates every tag before anything is sent
        if "artifact" in forms and "image" in forms and extra.endswith(artifact_suffix):
            raise PibakeError(f"Tag {extra!r} ends with {artifact_suffix!r}, which names the artifact form; "
                              "choose another tag.")
    deploy_dir = os.path.abspath(deploy_dir)
    files, left_out = release_files(deploy_dir)
    plan = Plan(files, build_annotations(deploy_dir, files, annotations, annotation_defaults), platforms,
                with_image="image" in forms)
    # What a pull would refuse must never be pushed: check the release's own checksum files first (the files are
    # hashed for the plan anyway).
    verify_checksum_files(deploy_dir, known={name: source.digest for name, source in plan.sources.items()},
                          names=list(plan.sources))
    hashed = time.monotonic()

    client = RegistryClient(settings, base.registry, progress=progress)
    client.ping()

    targets: List[Tuple[str, Reference, bytes, str]] = []  # (form, ref, raw, media type)
    for extra in tags:
        if "image" in forms:
            targets.append(("image", base.with_tag(extra), plan.image_raw, plan.image_type))
        if "artifact" in forms:
            art_tag = f"{extra}{artifact_suffix}" if "image" in forms else extra
            targets.append(("artifact", base.with_tag(art_tag), plan.artifact_raw, OCI_MANIFEST))
    current = {str(ref): client.manifest_digest(ref) for dummy_form, ref, dummy_raw, dummy_type in targets}
    tags_to_move = [str(ref) for dummy_form, ref, raw, dummy_type in targets if current[str(ref)] != _digest(raw)]

    needed: List[BlobSource] = []
    by_size = sorted((plan.sources[name] for name, dummy_path in plan.files), key=lambda src: -src.size)
    if "artifact" in forms:
        needed += by_size + [plan.empty]
    if "image" in forms:
        needed += [plan.layer] + plan.configs
    if attach:  # referrers point at the SBOM/checksum blobs and the empty config
        needed += [src for src in by_size if is_sbom(src.label) or is_checksums(src.label)] + [plan.empty]
    needed = list(dict.fromkeys(needed))

    blobs = []
    state_dir = state_dir or default_state_dir()
    for source in needed:
        t0 = time.monotonic()
        if check_mode:
            exists = client.blob_exists(base, source.digest)
            blobs.append({"name": source.label, "digest": source.digest, "size": source.size,
                          "uploaded": 0 if exists else source.size, "skipped": exists, "resumed_from": 0,
                          "seconds": 0.0})
            continue
        res = client.upload_blob(base, source, state_dir=state_dir)
        res["seconds"] = round(time.monotonic() - t0, 3)
        blobs.append(res)

    referrers = []
    pushed_manifests = 0
    if not check_mode:
        # platform manifests before the index that names them
        seen = set()
        for role, raw, media_type in plan.manifests:
            if role.startswith("image ") and role != "image index" and "image" in forms:
                ref = base.with_digest(_digest(raw))
                if _digest(raw) not in seen:
                    seen.add(_digest(raw))
                    if client.manifest_digest(ref) != _digest(raw):
                        client.put_manifest(ref, raw, media_type)
                        pushed_manifests += 1
        for form, ref, raw, media_type in targets:
            if current[str(ref)] != _digest(raw):
                client.put_manifest(ref, raw, media_type)
                pushed_manifests += 1
    if attach:
        subjects = []
        if "image" in forms:
            subjects.append((plan.image_raw, plan.image_type))
        if "artifact" in forms:
            subjects.append((plan.artifact_raw, OCI_MANIFEST))
        for subject_raw, subject_type in subjects:
            for role, raw, artifact_type in plan.referrers(subject_raw, subject_type):
                ref = base.with_digest(_digest(raw))
                moved = _attach(client, base, raw, artifact_type, subject_raw, check_mode)
                pushed_manifests += moved
                referrers.append({"role": role, "subject": _digest(subject_raw), "digest": _digest(raw),
                                  "ref": str(ref), "changed": bool(moved)})

    uploaded = sum(b["uploaded"] for b in blobs)
    result = {
        "changed": bool(tags_to_move) or uploaded > 0 or pushed_manifests > 0,
        "registry": base.registry,
        "repository": base.repository,
        "tags_moved": tags_to_move,
        "annotations": plan.annotations,
        "files": [{"name": name, "size": plan.sources[name].size, "digest": plan.sources[name].digest,
                   "media_type": media_type_for(name)} for name, dummy_path in plan.files],
        "left_out": left_out,
        "blobs": blobs,
        "referrers": referrers,
        "bytes_uploaded": uploaded,
        "seconds": round(time.monotonic() - started, 3),
        "hash_seconds": round(hashed - started, 3),
    }
    for form, ref, raw, dummy_type in targets:
        entry = result.setdefault(form, {"digest": _digest(raw), "refs": []})
        entry["refs"].append(str(ref))
        entry.setdefault("ref", str(ref))
        entry["pinned"] = str(base.with_digest(_digest(raw)))
    return result


def _attach(client: RegistryClient, base: Reference, raw: bytes, artifact_type: str, subject_raw: bytes,
            check_mode: bool) -> int:
    """Push one referrer manifest; keep the fallback tag's index in step when the registry has no referrers API.

    Returns the number of manifests written (0 when everything was already there).
    """
    digest = _digest(raw)
    ref = base.with_digest(digest)
    written = 0
    exists = client.manifest_digest(ref) == digest
    if check_mode:
        return 0 if exists else 1
    handled_by_registry = False
    if not exists:
        resp = client.put_manifest(ref, raw, OCI_MANIFEST)
        handled_by_registry = bool(resp.headers.get("OCI-Subject"))
        written += 1
    if handled_by_registry:
        return written
    subject_digest = _digest(subject_raw)
    api = client.request("GET", client.url(f"/v2/{base.repository}/referrers/{subject_digest}"),
                         headers={"Accept": OCI_INDEX})
    if api.status_code == 200 and api.headers.get("Content-Type", "").startswith(OCI_INDEX):
        return written
    fallback = base.with_tag(subject_digest.replace(":", "-"))
    manifest = json.loads(raw)
    entry = {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(raw), "artifactType": artifact_type}
    if manifest.get("annotations"):
        entry["annotations"] = manifest["annotations"]
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    if client.manifest_digest(fallback):
        index, dummy_digest, dummy_raw = client.get_manifest(fallback)
        index.setdefault("manifests", [])
    if any(m.get("digest") == digest for m in index["manifests"]):
        return written
    index["manifests"] = sorted(index["manifests"] + [entry], key=lambda m: m["digest"])
    client.put_manifest(fallback, canonical(index), OCI_INDEX)
    return written + 1


# -- pull -----------------------------------------------------------------------------------------------------
def _host_platform() -> Tuple[str, str]:
    machine = host_platform.machine().lower()
    return "linux", {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


def _safe_name(name: str, where: str) -> str:
    norm = posixpath.normpath(name.replace("\\", "/"))
    if (not name or name.startswith("/") or norm in (".", "..") or norm.startswith("../")
            or "/../" in f"/{norm}/" or "\0" in norm):
        raise PibakeError(f"{where} names the unsafe path {name!r}; refusing to write it.")
    return norm


def _classify(manifest: dict) -> str:
    media = manifest.get("mediaType", "")
    if media in (OCI_INDEX, DOCKER_LIST) or "manifests" in manifest:
        return "index"
    config_type = (manifest.get("config") or {}).get("mediaType", "")
    if manifest.get("artifactType") or config_type not in (OCI_CONFIG, DOCKER_CONFIG):
        return "artifact"
    return "image"


def resolve(client: RegistryClient, ref: Reference, platform: Optional[str] = None) -> dict:
    """Manifest (and the index above it) for ``ref``: ``{"form", "manifest", "digest", "top_digest"}``."""
    manifest, digest, dummy_raw = client.get_manifest(ref)
    top = digest
    kind = _classify(manifest)
    if kind == "index":
        entries = [m for m in manifest.get("manifests", []) if m.get("mediaType") in (OCI_MANIFEST, DOCKER_MANIFEST)]
        entries = [m for m in entries if not (m.get("annotations") or {}).get("vnd.docker.reference.type")]
        if not entries:
            raise PibakeError(f"{ref} is an index without image manifests; it is not a pibake publication.")
        wanted = _platform(platform) if platform else dict(zip(("os", "architecture"), _host_platform()))

        def score(entry: dict) -> int:
            plat = entry.get("platform") or {}
            return (plat.get("os") == wanted["os"]) + 2 * (plat.get("architecture") == wanted["architecture"])

        chosen = max(entries, key=score)
        if platform and score(chosen) < 3:
            raise PibakeError(f"{ref} has no manifest for platform {platform}; choose one it offers.")
        manifest, digest, dummy_raw = client.get_manifest(ref.with_digest(chosen["digest"]))
        kind = _classify(manifest)
    return {"form": kind, "manifest": manifest, "digest": digest, "top_digest": top}


def _expected_files(found: dict) -> Optional[Dict[str, str]]:
    """``{name: digest}`` the pull will produce, when the manifest says so (artifact form, or pibake's image form)."""
    manifest = found["manifest"]
    if found["form"] == "artifact":
        out = {}
        for layer in manifest.get("layers", []):
            title = (layer.get("annotations") or {}).get(TITLE) or layer["digest"].replace(":", "-")
            out[_safe_name(title, "the artifact")] = layer["digest"]
        return out
    layers = manifest.get("layers", [])
    if len(layers) == 1:
        text = (layers[0].get("annotations") or {}).get(FILES_ANNOTATION)
        if text:
            try:
                return {_safe_name(k, "the image"): v for k, v in json.loads(text).items()}
            except (ValueError, AttributeError):
                return None
    return None


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(4 * MIB), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def _matches(dest: str, expected: Optional[Dict[str, str]]) -> bool:
    if not expected or not os.path.isdir(dest):
        return False
    present = {os.path.relpath(os.path.join(root, f), dest)
               for root, dummy_dirs, names in os.walk(dest) for f in names}
    if present != set(expected):
        return False
    return all(_file_digest(os.path.join(dest, name)) == digest for name, digest in expected.items())


def _write_stream(reader, path: str) -> str:
    """Copy ``reader`` into ``path``; returns the sha256 digest of what was written."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        write_sparse(reader, out, digest)  # a pulled raw .img keeps the holes the build left
    return "sha256:" + digest.hexdigest()


def _pull_artifact(client: RegistryClient, ref: Reference, manifest: dict, tmp: str) -> Dict[str, str]:
    names = {}
    for layer in manifest.get("layers", []):
        title = (layer.get("annotations") or {}).get(TITLE) or layer["digest"].replace(":", "-")
        name = _safe_name(title, f"artifact {ref}")
        reader = client.open_blob(ref, layer["digest"], layer.get("size"))
        try:
            names[name] = _write_stream(reader, os.path.join(tmp, name))
            reader.verify()
        finally:
            reader.close()
    return names


def _pull_image(client: RegistryClient, ref: Reference, manifest: dict, tmp: str) -> Dict[str, str]:
    layers = manifest.get("layers", [])
    names = {}
    for layer in layers:
        if layer.get("mediaType") not in IMAGE_LAYER_TYPES:
            raise PibakeError(
                f"{ref} has a layer of type {layer.get('mediaType')}; only tar and tar+gzip layers can be unpacked."
            )
        reader: BlobReader = client.open_blob(ref, layer["digest"], layer.get("size"))
        try:
            with tarfile.open(fileobj=reader, mode="r|*", bufsize=4 * MIB) as tar:
                for member in tar:
                    name = member.name
                    while name.startswith("./"):
                        name = name[2:]
                    if not name.startswith("artifact/") or not member.isfile():
                        continue
                    rel = _safe_name(name[len("artifact/"):], f"image {ref}")
                    source = tar.extractfile(member)
                    names[rel] = _write_stream(source, os.path.join(tmp, rel))
            reader.verify()
        except tarfile.TarError as err:
            raise PibakeError(f"The layer of {ref} is not a readable tar ({err}); it is not a pibake image.") from None
        finally:
            reader.close()
    if not names:
        raise PibakeError(f"{ref} holds no /artifact files; it is not a pibake publication.")
    return names


def verify_checksum_files(folder: str, known: Optional[Mapping[str, str]] = None,
                          names: Optional[Sequence[str]] = None) -> List[str]:
    """Check every ``*.sha256`` / ``SHA256SUMS`` line whose file is in ``folder``; returns the names checked.

    ``known`` maps file names to digests already computed (so big files are not read again); ``names`` limits
    the check to those files (checksum files and their targets), as publish does for one release of a folder.
    """
    known = known or {}
    checked = []
    for name in sorted(os.listdir(folder)):
        if not is_checksums(name) or (names is not None and name not in names):
            continue
        with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
        for line in lines:
            parts = line.strip().split(None, 1)
            if len(parts) != 2 or len(parts[0]) != 64:
                continue
            target = os.path.basename(parts[1].lstrip("*").strip())
            path = os.path.join(folder, target)
            if not os.path.isfile(path) or (names is not None and target not in names):
                continue
            if (known.get(target) or _file_digest(path)) != "sha256:" + parts[0].lower():
                raise PibakeError(
                    f"{target} does not match its checksum in {name}; the published files disagree, "
                    "rebuild and publish."
                )
            checked.append(target)
    return checked


def pull(settings: RegistrySettings, ref_text: str, dest: str, *, platform: Optional[str] = None,
         overwrite: bool = True, verify_checksums: bool = True, check_mode: bool = False,
         progress: Progress = None) -> dict:
    """Pull either form into ``dest`` atomically; see the module docs for the result."""
    started = time.monotonic()
    ref = settings.reference(ref_text)
    client = RegistryClient(settings, ref.registry, progress=progress)
    found = resolve(client, ref, platform)
    expected = _expected_files(found)
    dest = os.path.abspath(dest)
    result = {"ref": str(ref), "form": found["form"], "digest": found["top_digest"],
              "manifest_digest": found["digest"], "dest": dest,
              "pinned": str(ref.with_digest(found["top_digest"])),
              "annotations": found["manifest"].get("annotations") or {}}
    if _matches(dest, expected):
        result.update(changed=False, files=sorted(expected), seconds=round(time.monotonic() - started, 3))
        return result
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise PibakeError(f"{dest} exists and is not a folder; choose another destination.")
    if os.path.isdir(dest) and os.listdir(dest) and not overwrite:
        raise PibakeError(f"{dest} already holds other files; empty it, choose another folder or set overwrite.")
    if check_mode:
        result.update(changed=True, files=sorted(expected or []), seconds=round(time.monotonic() - started, 3))
        return result
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.partial-", dir=parent)
    old = None
    try:
        if found["form"] == "artifact":
            names = _pull_artifact(client, ref, found["manifest"], tmp)
        else:
            names = _pull_image(client, ref, found["manifest"], tmp)
        if expected is not None and set(names) != set(expected):
            raise PibakeError(f"{ref} unpacked to other files than its manifest lists; refusing it.")
        for name, digest in (expected or {}).items():
            if names[name] != digest:
                raise PibakeError(f"{name} from {ref} does not match the digest its manifest records; "
                                  "nothing was kept, pull again.")
        checked = verify_checksum_files(tmp, names) if verify_checksums else []
        os.chmod(tmp, 0o755)
        if os.path.exists(dest):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.old-", dir=parent)
            os.rmdir(old)
            os.rename(dest, old)
        os.rename(tmp, dest)
        tmp = None
    finally:
        if tmp and os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        if old and os.path.exists(old):
            if os.path.exists(dest):
                shutil.rmtree(old, ignore_errors=True)
            else:  # put the previous folder back
                os.rename(old, dest)
    sizes = sum(os.path.getsize(os.path.join(dest, n)) for n in names)
    result.update(changed=True, files=sorted(names), checksums_verified=checked, bytes=sizes,
                  seconds=round(time.monotonic() - started, 3))
    return result
