# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Options of the OurBox contract check (see docs/reference/contracts.md).

    # a built image, re-attached (its root mounted at ROOT on this host):
    pytest tests/contracts --connection=chroot --hosts=ROOT --os-info deploy/<name>.os.info
    # a live device:
    pytest tests/contracts --hosts=ssh://admin@device --sudo --os-info deploy/<name>.os.info

Without --hosts the suite is skipped: it must never check the build host itself.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("pibake contracts")
    group.addoption("--os-info", default=None, help="deploy/os.info of the build; /etc/ourbox/release must match it")
    group.addoption("--pibake-target", default="auto", choices=["auto", "image", "device"],
                    help="image: a built image, sealed (no identity yet); device: a booted device; "
                         "auto: image for the chroot backend, device otherwise")
    group.addoption("--release-prefix", default="OURBOX_", help="key prefix in /etc/ourbox/release")
    group.addoption("--data-label", default="OURBOX_DATA", help="label of the DATA drive")
    group.addoption("--data-mountpoint", default="/var/lib/ourbox", help="mountpoint of the DATA drive")
    group.addoption("--device-timeout", default=None, type=int,
                    help="expected x-systemd.device-timeout in seconds (default: any value from 1 to 90)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("hosts", default=None):
        return
    skip = pytest.mark.skip(reason="contract check: pass --hosts (a chroot root or ssh://device) to run it")
    here = str(config.rootpath / "tests" / "contracts")
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def contract(request):
    opt = request.config.getoption
    return {
        "os_info": opt("os_info"),
        "target": opt("pibake_target"),
        "prefix": opt("release_prefix"),
        "label": opt("data_label"),
        "mountpoint": opt("data_mountpoint"),
        "timeout": opt("device_timeout"),
    }


@pytest.fixture
def target(host, contract):
    """``image`` or ``device``."""
    if contract["target"] != "auto":
        return contract["target"]
    return "image" if host.backend.NAME == "chroot" else "device"
