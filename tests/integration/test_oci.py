# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Publish, pull and mirror against a real docker-registry (distribution v2) on 127.0.0.1.

A fake deploy/ with a 320 MiB os.img.xz stand-in (deterministic pseudo-random data with holes) is published in
both forms, checked with skopeo (inspect, copy to an OCI layout) and with the collection's own pull, file by
file, bit for bit. Failure cases: htpasswd registry with a wrong password, unknown tag, unreachable registry,
registry killed mid-push (retried, clear error, re-run resumes), a corrupted blob (rejected, nothing written).
"""

import filecmp
import json
import os
import shutil
import subprocess
import tarfile

import pytest

from tests.support.fixtures import (  # noqa: F401  (pytest fixtures)
    auth_registry, busybox_index, fresh_registry, registry, skopeo)
from tests.support import test_images
from tests.support.fake_deploy import MIB, make_deploy, sha256_file

from ansible_collections.pibake.image.plugins.module_utils import _mirror, _oci
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._oci_client import RegistryClient, RegistryUnreachable
from ansible_collections.pibake.image.plugins.module_utils._oci_ref import RegistrySettings

pytestmark = pytest.mark.registry

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIG_MIB = 320


@pytest.fixture(scope="session")
def big_deploy(tmp_path_factory):
    folder = make_deploy(str(tmp_path_factory.mktemp("oci-big") / "deploy"), BIG_MIB)
    return {"dir": folder, "digests": {n: sha256_file(os.path.join(folder, n)) for n in os.listdir(folder)}}


@pytest.fixture
def small_deploy(tmp_path):
    folder = make_deploy(str(tmp_path / "deploy"), 3, seed=1)
    return {"dir": folder, "digests": {n: sha256_file(os.path.join(folder, n)) for n in os.listdir(folder)}}


def settings_for(reg, **extra):
    params = {"registry": reg.address, "namespace": "ourbox", "retries": 2, "retry_delay": 0.1}
    if reg.auth:
        params.update(username=reg.username, password=reg.password)
    params.update(extra)
    return RegistrySettings.from_sources(params, env={})


def assert_same_files(folder, deploy):
    assert sorted(os.listdir(folder)) == sorted(deploy["digests"])
    for name, digest in deploy["digests"].items():
        assert sha256_file(os.path.join(folder, name)) == digest, name


@pytest.fixture(scope="session")
def published(registry, big_deploy, tmp_path_factory):
    state = str(tmp_path_factory.mktemp("upload-state"))
    result = _oci.publish(big_deploy["dir"], settings_for(registry), "ourbox-mini-os", "1.4.0-dev",
                          extra_tags=["latest"], state_dir=state)
    return result


# -- the big publication, checked with skopeo and with our own pull ----------------------------------------------
def test_publish_reports_both_forms_and_annotations(published, big_deploy):
    assert published["changed"]
    assert published["image"]["ref"].endswith("/ourbox/ourbox-mini-os:1.4.0-dev")
    assert published["artifact"]["ref"].endswith("/ourbox/ourbox-mini-os:1.4.0-dev-artifact")
    notes = published["annotations"]
    assert notes["org.opencontainers.image.version"] == "1.4.0"
    assert notes["dev.pibake.image.variant"] == "dev"
    assert notes["dev.pibake.image.profile"] == "ourbox-mini"
    assert notes["org.opencontainers.image.revision"] == "0123456789abcdef0123456789abcdef01234567"
    assert notes["org.opencontainers.image.base.digest"] == "sha256:" + "ab" * 32
    assert notes["org.opencontainers.image.created"] == "2026-11-20T08:30:00Z"
    files = {f["name"]: f["digest"] for f in published["files"]}
    assert files == big_deploy["digests"]
    assert published["bytes_uploaded"] > 2 * BIG_MIB * MIB  # the file blob and the tar layer


def test_skopeo_inspects_the_image_form(published, registry, skopeo):
    ref = published["image"]["ref"]
    raw = skopeo.inspect(ref, raw=True)
    assert raw["mediaType"] == _oci.OCI_INDEX
    assert sorted(m["platform"]["architecture"] for m in raw["manifests"]) == ["amd64", "arm64"]
    info = skopeo.inspect(ref)
    assert info["Digest"] == published["image"]["digest"]
    assert info["Labels"]["org.opencontainers.image.version"] == "1.4.0"
    assert len(info["Layers"]) == 1
    arm = skopeo.inspect(ref, extra=["--override-arch", "arm64"], config=True)
    assert arm["architecture"] == "arm64" and arm["os"] == "linux"


def test_skopeo_inspects_the_artifact_form(published, skopeo, big_deploy):
    raw = skopeo.inspect(published["artifact"]["ref"], raw=True)
    assert raw["artifactType"] == _oci.ARTIFACT_TYPE
    assert raw["config"]["mediaType"] == _oci.EMPTY_MEDIA_TYPE
    titles = {layer["annotations"][_oci.TITLE]: layer for layer in raw["layers"]}
    assert set(titles) == set(big_deploy["digests"])
    assert titles["os.img.xz"]["mediaType"] == "application/vnd.pibake.disk-image.raw.v1+xz"
    assert titles["os.img.xz"]["size"] == BIG_MIB * MIB
    for name, layer in titles.items():
        assert layer["digest"] == big_deploy["digests"][name]


def _layout_blob(layout, digest):
    return os.path.join(layout, "blobs", "sha256", digest.split(":", 1)[1])


def _layout_manifest(layout):
    with open(os.path.join(layout, "index.json"), encoding="utf-8") as fh:
        top = json.load(fh)["manifests"][0]
    with open(_layout_blob(layout, top["digest"]), encoding="utf-8") as fh:
        return json.load(fh)


def test_skopeo_copies_the_image_form_to_an_oci_layout(published, skopeo, big_deploy, tmp_path):
    layout = str(tmp_path / "layout")
    skopeo.copy(f"docker://{published['image']['pinned']}", f"oci:{layout}:img",
                extra=["--override-arch", "arm64", "--preserve-digests"])
    manifest = _layout_manifest(layout)
    assert [layer["mediaType"] for layer in manifest["layers"]] == [_oci.OCI_LAYER_TAR]
    out = tmp_path / "files"
    with tarfile.open(_layout_blob(layout, manifest["layers"][0]["digest"])) as tar:
        names = sorted(m.name for m in tar.getmembers() if m.isfile())
        assert names == sorted(f"artifact/{n}" for n in big_deploy["digests"])
        for member in tar.getmembers():
            if member.isfile():
                dest = out / os.path.basename(member.name)
                dest.parent.mkdir(exist_ok=True)
                with tar.extractfile(member) as src, open(dest, "wb") as fh:
                    shutil.copyfileobj(src, fh, 4 * MIB)
    assert_same_files(str(out), big_deploy)
    assert filecmp.cmp(str(out / "os.img.xz"), os.path.join(big_deploy["dir"], "os.img.xz"), shallow=False)


def test_skopeo_copies_the_artifact_form_to_an_oci_layout(published, skopeo, big_deploy, tmp_path):
    layout = str(tmp_path / "layout")
    skopeo.copy(f"docker://{published['artifact']['pinned']}", f"oci:{layout}:art", extra=["--preserve-digests"])
    manifest = _layout_manifest(layout)
    for layer in manifest["layers"]:
        name = layer["annotations"][_oci.TITLE]
        assert sha256_file(_layout_blob(layout, layer["digest"])) == big_deploy["digests"][name]
    big = [layer for layer in manifest["layers"] if layer["annotations"][_oci.TITLE] == "os.img.xz"][0]
    assert filecmp.cmp(_layout_blob(layout, big["digest"]), os.path.join(big_deploy["dir"], "os.img.xz"),
                       shallow=False)


@pytest.mark.parametrize("form", ["image", "artifact"])
def test_own_pull_by_tag_and_digest_is_bit_identical(published, registry, big_deploy, tmp_path, form):
    settings = settings_for(registry)
    dest = str(tmp_path / "pulled")
    by_tag = _oci.pull(settings, published[form]["ref"], dest)
    assert by_tag["form"] == form and by_tag["changed"]
    assert_same_files(dest, big_deploy)
    assert filecmp.cmp(os.path.join(dest, "os.img.xz"), os.path.join(big_deploy["dir"], "os.img.xz"),
                       shallow=False)
    assert by_tag["checksums_verified"] == ["os.img.xz"]
    again = _oci.pull(settings, published[form]["pinned"], dest)  # by digest: already there
    assert not again["changed"] and again["digest"] == published[form]["digest"]
    assert os.listdir(tmp_path) == ["pulled"]  # no temporary folders left


def test_republish_sends_nothing_and_changes_nothing(published, registry, big_deploy, tmp_path):
    again = _oci.publish(big_deploy["dir"], settings_for(registry), "ourbox-mini-os", "1.4.0-dev",
                         extra_tags=["latest"], state_dir=str(tmp_path))
    assert not again["changed"]
    assert again["bytes_uploaded"] == 0
    assert all(blob["skipped"] for blob in again["blobs"])
    assert again["image"]["digest"] == published["image"]["digest"]


def test_sbom_and_checksums_are_attached_as_referrers(published, registry, skopeo):
    subjects = {published["image"]["digest"], published["artifact"]["digest"]}
    for subject in subjects:
        fallback = registry.ref("ourbox/ourbox-mini-os", subject.replace(":", "-"))
        index = skopeo.inspect(fallback, raw=True)
        types = sorted(m["artifactType"] for m in index["manifests"])
        assert types == sorted([_oci.CHECKSUMS_TYPE, "application/vnd.cyclonedx+json"])
        for entry in index["manifests"]:
            manifest = skopeo.inspect(registry.ref("ourbox/ourbox-mini-os", entry["digest"]), raw=True)
            assert manifest["subject"]["digest"] == subject


# -- failures ---------------------------------------------------------------------------------------------------
def test_htpasswd_registry_good_and_wrong_password(auth_registry, small_deploy, tmp_path):
    good = settings_for(auth_registry)
    result = _oci.publish(small_deploy["dir"], good, "os", "1", state_dir=str(tmp_path / "s"))
    assert result["changed"]
    pulled = _oci.pull(good, "os:1-artifact", str(tmp_path / "ok"))
    assert_same_files(pulled["dest"], small_deploy)

    wrong = settings_for(auth_registry, password="not-the-password")
    with pytest.raises(PibakeError) as err:
        _oci.pull(wrong, "os:1", str(tmp_path / "bad"))
    assert "refused the credentials of user 'pibake' (HTTP 401)" in str(err.value)
    assert "not-the-password" not in str(err.value)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(PibakeError) as err:
        _oci.publish(small_deploy["dir"], wrong, "os", "2", state_dir=str(tmp_path / "s"))
    assert "HTTP 401" in str(err.value)

    anonymous = RegistrySettings.from_sources({"registry": auth_registry.address}, env={})
    with pytest.raises(PibakeError) as err:
        _oci.pull(anonymous, "ourbox/os:1", str(tmp_path / "anon"))
    assert "requires a login (HTTP 401)" in str(err.value)


def test_unknown_tag_is_one_clear_sentence(registry, published, tmp_path):
    with pytest.raises(PibakeError) as err:
        _oci.pull(settings_for(registry), "ourbox-mini-os:9.9.9", str(tmp_path / "x"))
    assert str(err.value).startswith(f"{registry.address}/ourbox/ourbox-mini-os:9.9.9 does not exist in the registry")
    assert not (tmp_path / "x").exists()


def test_unreachable_registry_is_one_clear_sentence(fresh_registry, small_deploy, tmp_path):
    fresh_registry.stop()
    with pytest.raises(RegistryUnreachable) as err:
        _oci.publish(small_deploy["dir"], settings_for(fresh_registry), "os", "1", state_dir=str(tmp_path))
    assert f"Registry {fresh_registry.address} is unreachable (connection refused) after 3 attempt(s)" in str(err.value)


def test_registry_killed_mid_push_then_rerun_resumes(fresh_registry, big_deploy, tmp_path):
    settings = settings_for(fresh_registry, chunk_size=16 * MIB)
    state = str(tmp_path / "state")
    killed = []

    def kill_after_100_mib(event):
        if event["event"] == "upload" and event["name"] == "os.img.xz" and event["done"] >= 100 * MIB and not killed:
            fresh_registry.kill()
            killed.append(event["done"])

    with pytest.raises(RegistryUnreachable) as err:
        _oci.publish(big_deploy["dir"], settings, "os", "1.4.0", forms=["artifact"], state_dir=state,
                     progress=kill_after_100_mib)
    message = str(err.value)
    assert killed
    assert message.startswith(f"Upload of os.img.xz to {fresh_registry.address}/ourbox/os stopped at ")
    assert "after 3 attempt(s)" in message and message.endswith("run the publish again to resume.")
    assert os.listdir(state), "the upload session was remembered"

    fresh_registry.start()
    again = _oci.publish(big_deploy["dir"], settings, "os", "1.4.0", forms=["artifact"], state_dir=state)
    blob = [b for b in again["blobs"] if b["name"] == "os.img.xz"][0]
    assert blob["resumed_from"] >= killed[0]
    assert blob["uploaded"] == BIG_MIB * MIB - blob["resumed_from"]
    assert os.listdir(state) == []
    pulled = _oci.pull(settings, "os:1.4.0", str(tmp_path / "pulled"))
    assert_same_files(pulled["dest"], big_deploy)


def test_registry_killed_mid_pull_resumes_with_range(fresh_registry, big_deploy, tmp_path, monkeypatch):
    settings = settings_for(fresh_registry, retries=4, retry_delay=0.5)
    _oci.publish(big_deploy["dir"], settings, "os", "1", forms=["artifact"], attach=False,
                 state_dir=str(tmp_path / "s"))
    restarted = []

    def kill_and_restart(event):
        if event["event"] == "download" and event["done"] >= 100 * MIB and not restarted:
            restarted.append(event["done"])
            fresh_registry.kill()
            fresh_registry.start()  # back before the first retry (0.5 s)

    client_requests = []
    original = RegistryClient.request

    def counting(self, method, url, **kw):
        client_requests.append((method, (kw.get("headers") or {}).get("Range")))
        return original(self, method, url, **kw)

    monkeypatch.setattr(RegistryClient, "request", counting)
    pulled = _oci.pull(settings, "os:1", str(tmp_path / "pulled"), progress=kill_and_restart)
    assert restarted
    assert any(rng and rng != "bytes=0-" for method, rng in client_requests if method == "GET"), client_requests
    assert_same_files(pulled["dest"], big_deploy)


def _corrupt_blob(registry, digest):
    hexa = digest.split(":", 1)[1]
    data = os.path.join(registry.storage, "docker", "registry", "v2", "blobs", "sha256", hexa[:2], hexa, "data")
    with open(data, "r+b") as fh:
        fh.seek(100_000)
        byte = fh.read(1)
        fh.seek(100_000)
        fh.write(bytes([byte[0] ^ 0xFF]))


def test_corrupted_blob_is_rejected_and_nothing_is_written(fresh_registry, small_deploy, tmp_path):
    settings = settings_for(fresh_registry)
    result = _oci.publish(small_deploy["dir"], settings, "os", "1", state_dir=str(tmp_path / "s"))
    client = RegistryClient(settings, fresh_registry.address)
    layer = _oci.resolve(client, settings.reference(result["image"]["ref"]))["manifest"]["layers"][0]["digest"]
    _corrupt_blob(fresh_registry, small_deploy["digests"]["os.img.xz"])
    _corrupt_blob(fresh_registry, layer)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "previous.txt").write_text("kept\n")
    for form in ("artifact", "image"):
        with pytest.raises(PibakeError) as err:
            _oci.pull(settings, result[form]["ref"], str(dest))
        assert "failed verification" in str(err.value) and "nothing was kept" in str(err.value)
        assert sorted(os.listdir(dest)) == ["previous.txt"]
        assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []  # no partial folder left


def test_another_builds_files_in_the_deploy_folder_are_left_out(fresh_registry, tmp_path):
    folder = make_deploy(str(tmp_path / "deploy"), 1, seed=2)
    for name in ("sbom.cdx.json", "os.img.bmap"):  # name them after the image, as a pibake build does
        os.rename(os.path.join(folder, name), os.path.join(folder, "os." + name.split(".", 1)[1]))
    with open(os.path.join(folder, "os.info"), "a", encoding="utf-8") as fh:
        fh.write('IMAGE="os.img.xz"\n')
    shutil.copy(os.path.join(folder, "os.img.xz"), os.path.join(folder, "older-build.img.xz"))
    with open(os.path.join(folder, "older-build.img.xz.sha256"), "w", encoding="utf-8") as fh:
        fh.write("0" * 64 + "  older-build.img.xz\n")  # stale: must neither stop publish nor be shipped
    settings = settings_for(fresh_registry)
    result = _oci.publish(folder, settings, "os", "1", state_dir=str(tmp_path / "s"))
    assert result["left_out"] == ["older-build.img.xz", "older-build.img.xz.sha256"]
    pulled = tmp_path / "pulled"
    _oci.pull(settings, result["artifact"]["ref"], str(pulled))
    assert sorted(os.listdir(pulled)) == ["build.log", "os.cdx.json", "os.img.bmap", "os.img.xz",
                                          "os.img.xz.sha256", "os.info"]


def test_check_mode_publish_sends_nothing(fresh_registry, small_deploy, tmp_path):
    settings = settings_for(fresh_registry)
    planned = _oci.publish(small_deploy["dir"], settings, "os", "1", state_dir=str(tmp_path), check_mode=True)
    assert planned["changed"] and not any(b["skipped"] for b in planned["blobs"])
    with pytest.raises(PibakeError):
        _oci.pull(settings, "os:1", str(tmp_path / "none"))


# -- playbooks ----------------------------------------------------------------------------------------------------
def run_playbook(name, env, *extra, namespace_var_lib=None):
    argv = [os.path.join(REPO, ".venv", "bin", "ansible-playbook"), os.path.join(REPO, "playbooks", name), *extra]
    if namespace_var_lib:  # skopeo as root caches under /var/lib/containers: give it a private /var/lib
        script = 'mount --bind "$0" /var/lib && exec "$@"'
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, namespace_var_lib, *argv]
    return subprocess.run(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300, check=False)


def test_publish_and_pull_playbooks_with_credentials_from_environment(auth_registry, small_deploy, tmp_path):
    log = tmp_path / "build.log"
    env = dict(os.environ, PIBAKE_REGISTRY=auth_registry.address, PIBAKE_REGISTRY_NAMESPACE="team",
               PIBAKE_REGISTRY_USER=auth_registry.username, PIBAKE_REGISTRY_PASSWORD=auth_registry.password,
               PIBAKE_BUILD_LOG=str(log), PIBAKE_CACHE_DIR=str(tmp_path / "cache"), ANSIBLE_NOCOLOR="1")
    pub = run_playbook("publish.yml", env, "-v", "-e", f"pibake_deploy_dir={small_deploy['dir']}",
                       "-e", f"pibake_work_dir={tmp_path / 'build'}")
    assert pub.returncode == 0, pub.stdout[-3000:]
    assert f"{auth_registry.address}/team/ourbox-mini:1.4.0-dev" in pub.stdout  # NAME and VERSION-VARIANT
    pull = run_playbook("pull.yml", env, "-e", "pibake_pull_ref=ourbox-mini:1.4.0-dev",
                        "-e", f"pibake_pull_dest={tmp_path / 'out'}", "-e", f"pibake_work_dir={tmp_path / 'build'}")
    assert pull.returncode == 0, pull.stdout[-3000:]
    assert_same_files(str(tmp_path / "out"), small_deploy)
    for text in (pub.stdout, pull.stdout, log.read_text()):
        assert auth_registry.password not in text
    env["PIBAKE_REGISTRY_PASSWORD"] = "wrong-password-123"
    bad = run_playbook("pull.yml", env, "-e", "pibake_pull_ref=ourbox-mini:1.4.0-dev",
                       "-e", f"pibake_pull_dest={tmp_path / 'bad'}")
    assert bad.returncode != 0
    assert "refused the credentials of user 'pibake' (HTTP 401)" in bad.stdout.replace("\n        ", " ")
    assert "wrong-password-123" not in bad.stdout and "wrong-password-123" not in log.read_text()


def test_mirror_all_platforms_and_arm64_only(busybox_index, registry, auth_registry, skopeo):
    settings = settings_for(auth_registry, namespace="mirror")
    src = busybox_index["ref"]
    every = _mirror.mirror([src], settings, platforms="all", skopeo_argv=skopeo.argv([]), env=skopeo.env())
    assert every["images"][0]["digest"] == busybox_index["digest"]  # upstream index digest kept
    arm = _mirror.mirror([{"src": src, "dest": "mirror/busybox-arm64:1.0"}], settings, platforms="linux/arm64",
                         skopeo_argv=skopeo.argv([]), env=skopeo.env())
    pinned = arm["images"][0]["pinned"]
    info = skopeo.inspect(pinned, creds=auth_registry.creds(), raw=True)
    assert info["mediaType"] == test_images.OCI_MANIFEST
    config = skopeo.inspect(pinned, creds=auth_registry.creds(), config=True)
    assert config["architecture"] == "arm64"
    again = _mirror.mirror([src], settings, platforms="all", skopeo_argv=skopeo.argv([]), env=skopeo.env())
    assert not again["changed"]


@pytest.mark.skipif(os.geteuid() != 0, reason="the playbook run gets a private /var/lib through a mount namespace")
def test_mirror_images_playbook(busybox_index, fresh_registry, tmp_path):
    varlib = tmp_path / "var-lib"
    varlib.mkdir()
    env = dict(os.environ, PIBAKE_BUILD_LOG=str(tmp_path / "build.log"), ANSIBLE_NOCOLOR="1")
    images = json.dumps({"pibake_mirror_images": [busybox_index["ref"]], "pibake_registry": fresh_registry.address,
                         "pibake_mirror_platforms": "linux/arm64"})
    first = run_playbook("mirror-images.yml", env, "-e", images, namespace_var_lib=str(varlib))
    assert first.returncode == 0, first.stdout[-3000:]
    assert "changed=1" in first.stdout
    second = run_playbook("mirror-images.yml", env, "-e", images, namespace_var_lib=str(varlib))
    assert second.returncode == 0 and "changed=0" in second.stdout, second.stdout[-3000:]
    assert f"{fresh_registry.address}/mirror/upstream/busybox-multi@sha256:" in second.stdout
