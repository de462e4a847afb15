# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""The test-support registry and image helpers work against a real docker-registry."""

import os
import urllib.error
import urllib.request

import pytest

from tests.support.fixtures import auth_registry, busybox_image, busybox_index, fresh_registry, registry, skopeo  # noqa: F401

pytestmark = pytest.mark.registry


def test_registry_answers_and_restarts(fresh_registry):
    assert fresh_registry.answers()
    fresh_registry.stop()
    assert not fresh_registry.answers()
    fresh_registry.start()
    assert fresh_registry.answers()


def test_auth_registry_rejects_anonymous(auth_registry):
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{auth_registry.url}/v2/", timeout=5)
    assert err.value.code == 401


def test_busybox_image_is_arm64(busybox_image, skopeo):
    info = skopeo.inspect(busybox_image["pinned"])
    assert info["Architecture"] == "arm64" and info["Os"] == "linux"
    assert info["Digest"] == busybox_image["digest"]


def test_busybox_index_has_two_arches(busybox_index, skopeo):
    raw = skopeo.inspect(busybox_index["pinned"], raw=True)
    assert sorted(m["platform"]["architecture"] for m in raw["manifests"]) == ["amd64", "arm64"]


def test_push_with_credentials(auth_registry, skopeo, tmp_path):
    from tests.support import test_images

    src = test_images.build_image_layout(str(tmp_path / "l"), extra_files={"etc/x": b"x"})
    digest = test_images.push_layout(src, auth_registry.ref("t/x", "1"), skopeo, creds=auth_registry.creds())
    assert skopeo.inspect(auth_registry.ref("t/x", "1"), creds=auth_registry.creds())["Digest"] == digest
    with pytest.raises(RuntimeError):
        skopeo.inspect(auth_registry.ref("t/x", "1"), creds=f"{auth_registry.username}:wrong")


@pytest.mark.skipif(os.geteuid() != 0, reason="skopeo only uses /var/lib/containers as root")
def test_skopeo_cache_stays_in_its_temp_dir(busybox_image, skopeo):
    # the blob-info cache lands in skopeo's private /var/lib, proving the bind mount took effect
    assert os.path.exists(os.path.join(skopeo.varlib, "containers", "cache", "blob-info-cache-v1.boltdb"))
