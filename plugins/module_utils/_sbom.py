# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""A CycloneDX SBOM of an image's installed Debian packages, built with cyclonedx-python-lib.

The package list comes from ``/var/lib/dpkg/status`` in the image, read without mounting (debugfs on the root
partition's offset) or from a mounted root directory. Only packages whose status is ``install ok installed``
count. Each becomes a component with a ``pkg:deb`` package URL; the image itself is the BOM's metadata component.
The BOM's serial number is derived from its content and the timestamp honours ``SOURCE_DATE_EPOCH``, so the same
image gives the same file.
"""

from __future__ import annotations

import datetime
import os
import re
import uuid
from typing import Dict, List, Optional

from ansible_collections.pibake.image.plugins.module_utils import _ext4
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._imagefile import read_table

DPKG_STATUS = "/var/lib/dpkg/status"
SCHEMAS = ("1.4", "1.5", "1.6")


def parse_status(content: str) -> List[Dict[str, str]]:
    """Paragraphs of a dpkg status file (deb822), continuation lines joined, installed packages only."""
    packages = []
    for block in re.split(r"\n\s*\n", content):
        fields: Dict[str, str] = {}
        key = None
        for raw in block.splitlines():
            if raw.startswith((" ", "\t")) and key:
                fields[key] += "\n" + raw[1:]
                continue
            name, sep, value = raw.partition(":")
            if sep and name and not name.startswith("#"):
                key = name.strip()
                fields[key] = value.strip()
        if fields.get("Package") and fields.get("Status", "").split()[-1:] == ["installed"]:
            packages.append(fields)
    return sorted(packages, key=lambda f: (f["Package"], f.get("Architecture", "")))


def read_status(image: Optional[str] = None, root_dir: Optional[str] = None) -> str:
    if root_dir:
        path = os.path.join(root_dir, DPKG_STATUS.lstrip("/"))
        if not os.path.isfile(path):
            raise PibakeError(f"{path} does not exist; point root_dir at the root of a Debian-based system.")
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    if not image:
        raise PibakeError("Pass image (a .img file) or root_dir (a mounted root) to build the SBOM from.")
    table = read_table(image)
    for part in sorted(table.partitions, key=lambda p: -p.number):
        if _ext4.is_ext(image, part.offset):
            data = _ext4.read_file(image, part.offset, DPKG_STATUS)
            if data is not None:
                return data.decode(errors="replace")
    raise PibakeError(f"No partition of {image} holds {DPKG_STATUS}; the SBOM needs a Debian-based root.")


def _source(fields: Dict[str, str]) -> Dict[str, str]:
    """Source package name and version (``Source: name (version)`` or implied by the binary package)."""
    source = fields.get("Source", "")
    match = re.match(r"^(\S+)(?:\s+\((.+)\))?$", source)
    if not match:
        return {"name": fields["Package"], "version": fields.get("Version", "")}
    return {"name": match.group(1), "version": match.group(2) or fields.get("Version", "")}


def build(packages: List[Dict[str, str]], *, name: str, version: str, distro: str = "debian",
          schema: str = "1.6", timestamp: Optional[datetime.datetime] = None) -> str:
    """The CycloneDX JSON document for ``packages``."""
    from cyclonedx.model import Property
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.contact import OrganizationalEntity
    from cyclonedx.output import make_outputter
    from cyclonedx.schema import OutputFormat, SchemaVersion
    from packageurl import PackageURL

    if schema not in SCHEMAS:
        raise PibakeError(f"CycloneDX schema {schema} is not supported; use one of {', '.join(SCHEMAS)}.")
    if timestamp is None:
        epoch = os.environ.get("SOURCE_DATE_EPOCH")
        timestamp = (datetime.datetime.fromtimestamp(int(epoch), tz=datetime.timezone.utc) if epoch
                     else datetime.datetime.now(datetime.timezone.utc))
    components = []
    for fields in packages:
        arch = fields.get("Architecture", "")
        src = _source(fields)
        qualifiers = {"arch": arch} if arch else {}
        if src["name"] != fields["Package"] or src["version"] != fields.get("Version", ""):
            qualifiers["upstream"] = f"{src['name']}@{src['version']}"
        purl = PackageURL(type="deb", namespace=distro, name=fields["Package"], version=fields.get("Version"),
                          qualifiers=qualifiers or None)
        properties = [Property(name="pibake:deb:source", value=f"{src['name']} {src['version']}".strip())]
        if fields.get("Installed-Size"):
            properties.append(Property(name="pibake:deb:installed_size_kib", value=fields["Installed-Size"]))
        supplier = OrganizationalEntity(name=fields["Maintainer"]) if fields.get("Maintainer") else None
        description = fields.get("Description", "").split("\n")[0] or None
        components.append(Component(
            type=ComponentType.LIBRARY if fields.get("Section", "").startswith("libs") or
            fields["Package"].startswith("lib") else ComponentType.APPLICATION,
            name=fields["Package"], version=fields.get("Version"), purl=purl, bom_ref=purl.to_string(),
            description=description, supplier=supplier, properties=properties))
    image_component = Component(type=ComponentType.OPERATING_SYSTEM, name=name, version=version,
                                bom_ref=f"pibake-image:{name}@{version}")
    serial = uuid.uuid5(uuid.NAMESPACE_URL, "pibake-sbom:" + name + "@" + version + ":" +
                        ",".join(f"{c.name}={c.version}" for c in components))
    bom = Bom(components=components, serial_number=serial,
              metadata=BomMetaData(component=image_component, timestamp=timestamp))
    bom.register_dependency(image_component, components)
    version_enum = {"1.4": SchemaVersion.V1_4, "1.5": SchemaVersion.V1_5, "1.6": SchemaVersion.V1_6}[schema]
    return make_outputter(bom, OutputFormat.JSON, version_enum).output_as_string(indent=2) + "\n"
