# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""OCI publish/pull pieces that need no registry: references, settings, blob sources, annotations, safety."""

import hashlib
import io
import json
import os
import tarfile

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _mirror, _oci
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._oci_blob import bytes_source, file_source, tar_source
from ansible_collections.pibake.image.plugins.module_utils._oci_ref import Reference, RegistrySettings


# -- settings and references -------------------------------------------------------------------------------------
def test_settings_come_from_the_environment_when_not_given():
    env = {"PIBAKE_REGISTRY": "reg.example:5000", "PIBAKE_REGISTRY_NAMESPACE": "team",
           "PIBAKE_REGISTRY_USER": "u", "PIBAKE_REGISTRY_PASSWORD": "p", "PIBAKE_REGISTRY_TLS": "false"}
    settings = RegistrySettings.from_sources({}, env=env)
    assert (settings.registry, settings.namespace, settings.tls, settings.username) == (
        "reg.example:5000", "team", False, "u")
    explicit = RegistrySettings.from_sources({"registry": "other:1", "tls": True}, env=env)
    assert explicit.registry == "other:1" and explicit.tls is True


def test_password_is_not_in_repr():
    settings = RegistrySettings.from_sources({"registry": "r:1", "username": "u", "password": "hunter2"}, env={})
    assert "hunter2" not in repr(settings)


@pytest.mark.parametrize("params, fragment", [
    ({"registry": "https://reg"}, "without https://"),
    ({"registry": "reg", "username": "u"}, "credentials are incomplete"),
    ({"registry": "reg", "namespace": "Bad Name"}, "namespace"),
    ({"registry": "reg", "tls": "maybe"}, "true, false or auto"),
])
def test_bad_settings_are_one_sentence(params, fragment):
    with pytest.raises(PibakeError) as err:
        RegistrySettings.from_sources(params, env={})
    assert fragment in str(err.value)


def test_tls_defaults_to_https_except_loopback():
    settings = RegistrySettings.from_sources({"registry": "reg.example"}, env={})
    assert settings.uses_tls("reg.example") and not settings.uses_tls("127.0.0.1:5000")
    assert not settings.uses_tls("localhost:5000") and not settings.uses_tls("[::1]:5000")


@pytest.mark.parametrize("text, expected", [
    ("os:1.0", ("reg:5000", "team/os", "1.0", None)),
    ("team/os:1.0", ("reg:5000", "team/os", "1.0", None)),
    ("other/os", ("reg:5000", "team/other/os", None, None)),
    ("host.example/a/b:t", ("host.example", "a/b", "t", None)),
    ("localhost:5000/os@sha256:" + "a" * 64, ("localhost:5000", "os", None, "sha256:" + "a" * 64)),
    ("docker://127.0.0.1:1/x:y", ("127.0.0.1:1", "x", "y", None)),
])
def test_reference_parsing(text, expected):
    settings = RegistrySettings(registry="reg:5000", namespace="team")
    ref = Reference.parse(text, settings)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == expected


@pytest.mark.parametrize("text", ["Os:1", "os:bad tag", "os@sha256:1234", ""])
def test_bad_references_are_rejected(text):
    with pytest.raises(PibakeError):
        Reference.parse(text, RegistrySettings(registry="reg"))


def test_reference_without_any_registry_names_the_setting():
    with pytest.raises(PibakeError) as err:
        Reference.parse("os:1", RegistrySettings())
    assert "PIBAKE_REGISTRY" in str(err.value)


# -- blob sources --------------------------------------------------------------------------------------------------
def test_tar_source_is_a_valid_tar_and_reads_at_any_offset(tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(70_001))
    small = tmp_path / "os.info"
    small.write_text("VERSION=1\n")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    src = tar_source([("big.bin", str(big)), ("empty", str(empty)), ("os.info", str(small))], mtime=1700000000)
    whole = src.read(0, src.size)
    assert len(whole) == src.size
    assert src.digest == "sha256:" + hashlib.sha256(whole).hexdigest()
    assert b"".join(data for dummy_offset, data in src.chunks(0, 4096)) == whole
    for offset in (0, 511, 512, 513, 70_000, src.size - 1):
        assert src.read(offset, 1000) == whole[offset:offset + 1000]
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"artifact", "artifact/big.bin", "artifact/empty", "artifact/os.info"}
        assert tar.extractfile("artifact/big.bin").read() == big.read_bytes()
        assert members["artifact/os.info"].mtime == 1700000000 and members["artifact/os.info"].uid == 0
    assert src.file_digests[str(big)] == "sha256:" + hashlib.sha256(big.read_bytes()).hexdigest()


def test_file_and_bytes_sources(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    assert file_source(str(path)).digest == "sha256:" + hashlib.sha256(b"x" * 10).hexdigest()
    assert bytes_source(b"{}", "e").digest == "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


# -- deploy folder, annotations, manifests -------------------------------------------------------------------------
def _deploy(tmp_path, info='NAME="OurBox Mini"\nVERSION="1.2.0"\nVARIANT="dev"\nBUILD_TIME="2026-01-02T03:04:05Z"\n'):
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    (deploy / "os.img.xz").write_bytes(b"\xfd7zXZ" + b"\0" * 100)
    (deploy / "os.info").write_text(info)
    (deploy / "build.log").write_text("log\n")
    (deploy / "image.cdx.json").write_text("{}")
    (deploy / "os.img.xz.sha256").write_text(hashlib.sha256((deploy / "os.img.xz").read_bytes()).hexdigest()
                                             + "  os.img.xz\n")
    (deploy / ".hidden").write_text("skip me")
    (deploy / "sub").mkdir()
    return str(deploy)


def test_annotations_from_os_info_with_prefix_and_overrides(tmp_path):
    deploy = _deploy(tmp_path, 'OURBOX_VERSION="2.0"\nOURBOX_VARIANT=prod\nOURBOX_GIT_REVISION=abc\n'
                               'OURBOX_BASE_IMAGE_SHA256=' + "c" * 64 + '\nOURBOX_BUILD_TIME=1700000000\n')
    files = _oci.deploy_files(deploy)
    notes = _oci.build_annotations(deploy, files, {"profile": "ourbox-mini", "variant": "beta"},
                                   {"profile": "ignored", "dev.example/x": "y"})
    assert notes["org.opencontainers.image.version"] == "2.0"
    assert notes["dev.pibake.image.variant"] == "beta"          # override wins
    assert notes["dev.pibake.image.profile"] == "ourbox-mini"   # override beats default
    assert notes["dev.example/x"] == "y"                         # default fills a gap
    assert notes["org.opencontainers.image.revision"] == "abc"
    assert notes["org.opencontainers.image.base.digest"] == "sha256:" + "c" * 64
    assert notes["org.opencontainers.image.created"] == "2023-11-14T22:13:20Z"


def test_deploy_files_skip_hidden_and_folders(tmp_path):
    names = [name for name, dummy_path in _oci.deploy_files(_deploy(tmp_path))]
    assert names == ["build.log", "image.cdx.json", "os.img.xz", "os.img.xz.sha256", "os.info"]
    with pytest.raises(PibakeError):
        _oci.deploy_files(str(tmp_path / "missing"))


def test_a_shared_deploy_folder_publishes_only_the_release_os_info_names(tmp_path):
    deploy = _deploy(tmp_path, 'NAME="cubeos-1.0-dev"\nIMAGE="cubeos-1.0-dev.img.xz"\n')
    for name in ("cubeos-1.0-dev.img.xz", "cubeos-1.0-dev.img.xz.sha256", "cubeos-1.0-dev.bmap",
                 "cubeos-1.0-dev.cdx.json", "rpi-imager.json"):
        (tmp_path / "deploy" / name).write_text(name)
    files, left_out = _oci.release_files(deploy)
    assert [name for name, dummy_path in files] == [
        "build.log", "cubeos-1.0-dev.bmap", "cubeos-1.0-dev.cdx.json", "cubeos-1.0-dev.img.xz",
        "cubeos-1.0-dev.img.xz.sha256", "os.info", "rpi-imager.json"]
    assert left_out == ["image.cdx.json", "os.img.xz", "os.img.xz.sha256"]
    # Only the release's own checksum files are checked: another build's stale checksum does not stop publish.
    (tmp_path / "deploy" / "os.img.xz.sha256").write_text("0" * 64 + "  os.img.xz\n")
    with pytest.raises(PibakeError):
        _oci.verify_checksum_files(deploy)
    assert _oci.verify_checksum_files(deploy, names=[name for name, dummy_path in files]) == []


def test_without_an_image_in_os_info_the_whole_folder_is_the_release(tmp_path):
    deploy = _deploy(tmp_path)  # NAME="OurBox Mini", no IMAGE (a seed-style os.info)
    files, left_out = _oci.release_files(deploy)
    assert files == _oci.deploy_files(deploy) and left_out == []
    (tmp_path / "gone").mkdir()
    deploy = _deploy(tmp_path / "gone", 'IMAGE="cubeos-1.0-dev.img.xz"\n')  # names an image that is not there
    assert _oci.release_files(deploy) == (_oci.deploy_files(deploy), [])


def test_defaults_from_os_info(tmp_path):
    assert _oci.defaults_from_os_info(_deploy(tmp_path)) == {"repository": "ourbox-mini", "tag": "1.2.0-dev"}


def test_plan_is_deterministic_and_well_formed(tmp_path):
    deploy = _deploy(tmp_path)
    notes = _oci.build_annotations(deploy, _oci.deploy_files(deploy))
    first = _oci.Plan(_oci.deploy_files(deploy), notes, ["linux/amd64", "linux/arm64"])
    second = _oci.Plan(_oci.deploy_files(deploy), notes, ["linux/amd64", "linux/arm64"])
    assert first.image_raw == second.image_raw and first.artifact_raw == second.artifact_raw
    index = json.loads(first.image_raw)
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "arm64"]
    assert index["manifests"][1]["platform"]["variant"] == "v8"
    artifact = json.loads(first.artifact_raw)
    assert artifact["artifactType"] == _oci.ARTIFACT_TYPE
    assert {layer["annotations"][_oci.TITLE]: layer["mediaType"] for layer in artifact["layers"]} == {
        "build.log": "text/plain", "image.cdx.json": "application/vnd.cyclonedx+json",
        "os.img.xz": "application/vnd.pibake.disk-image.raw.v1+xz",
        "os.img.xz.sha256": "application/vnd.pibake.checksums.v1+text",
        "os.info": "application/vnd.pibake.os-info.v1+text"}
    roles = [role for role, dummy_raw, dummy_type in first.referrers(first.artifact_raw, _oci.OCI_MANIFEST)]
    assert roles == ["sbom image.cdx.json", "checksums"]
    single = _oci.Plan(_oci.deploy_files(deploy), notes, ["linux/arm64"])
    assert json.loads(single.image_raw)["mediaType"] == _oci.OCI_MANIFEST


@pytest.mark.parametrize("name", ["../etc/passwd", "/etc/passwd", "a/../../b", "..", ""])
def test_unsafe_names_are_refused(name):
    with pytest.raises(PibakeError):
        _oci._safe_name(name, "test")  # pylint: disable=protected-access


def test_checksum_files_are_verified(tmp_path):
    deploy = _deploy(tmp_path)
    assert _oci.verify_checksum_files(deploy) == ["os.img.xz"]
    with open(os.path.join(deploy, "os.img.xz"), "ab") as fh:
        fh.write(b"!")
    with pytest.raises(PibakeError) as err:
        _oci.verify_checksum_files(deploy)
    assert "does not match its checksum" in str(err.value)


def test_publish_refuses_files_that_disagree_with_their_checksums_before_contacting_the_registry(tmp_path):
    deploy = _deploy(tmp_path)
    with open(os.path.join(deploy, "os.img.xz"), "ab") as fh:
        fh.write(b"!")
    settings = RegistrySettings(registry="127.0.0.1:9", namespace="team")  # nothing listens: must not be reached
    with pytest.raises(PibakeError) as err:
        _oci.publish(deploy, settings, "os", "1.0")
    assert "os.img.xz does not match its checksum in os.img.xz.sha256" in str(err.value)


# -- mirror planning ----------------------------------------------------------------------------------------------
def test_mirror_plan_names():
    settings = RegistrySettings(registry="mirror.local:5000", namespace="mirror")
    planned = _mirror.plan(["alpine:3.20", "ghcr.io/org/app@sha256:" + "b" * 64,
                            {"src": "quay.io/x/y:1", "dest": "custom/y:2"}], settings)
    assert [str(p["src"]) for p in planned] == ["docker.io/library/alpine:3.20",
                                                "ghcr.io/org/app@sha256:" + "b" * 64, "quay.io/x/y:1"]
    assert [str(p["dest"]) for p in planned] == ["mirror.local:5000/mirror/library/alpine:3.20",
                                                 "mirror.local:5000/mirror/org/app:sha256-" + "b" * 16,
                                                 "mirror.local:5000/mirror/custom/y:2"]
    with pytest.raises(PibakeError):
        _mirror.plan([{"dest": "x"}], settings)
