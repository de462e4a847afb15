# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""_sbom: dpkg status parsing and a CycloneDX document that validates against the schema."""

import json

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from ansible_collections.pibake.image.plugins.module_utils import _sbom
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from tests.support.finalize_images import DPKG_STATUS, image_copy


def test_parse_status_keeps_installed_packages_only():
    packages = _sbom.parse_status(DPKG_STATUS)
    assert [p["Package"] for p in packages] == ["base-files", "libc6", "openssh-server"]
    assert packages[0]["Description"].startswith("Debian base system miscellaneous files\n")
    assert _sbom._source(packages[1]) == {"name": "glibc", "version": "2.36-9+deb12u4"}
    assert _sbom._source(packages[2]) == {"name": "openssh", "version": "1:9.2p1-2+deb12u2"}


def test_sbom_from_the_image_validates_and_is_reproducible(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    img = image_copy(tmp_path, data_mb=1, deleted_mb=0, fat_deleted_mb=0)
    packages = _sbom.parse_status(_sbom.read_status(img))
    doc = _sbom.build(packages, name="cubeos", version="1.2.3")
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(doc) is None
    data = json.loads(doc)
    purls = sorted(c["purl"] for c in data["components"])
    assert purls[0] == "pkg:deb/debian/base-files@12.4%2Bdeb12u5?arch=arm64"
    assert data["metadata"]["component"]["name"] == "cubeos" and data["metadata"]["timestamp"].startswith("2023-11-14")
    assert _sbom.build(packages, name="cubeos", version="1.2.3") == doc


def test_root_dir_source_and_missing_status(tmp_path):
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg/status").write_text(DPKG_STATUS)
    assert "Package: libc6" in _sbom.read_status(root_dir=str(tmp_path))
    with pytest.raises(PibakeError, match="does not exist"):
        _sbom.read_status(root_dir=str(tmp_path / "nope"))
    with pytest.raises(PibakeError, match="schema"):
        _sbom.build([], name="x", version="1", schema="2.0")
