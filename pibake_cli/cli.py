# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""The `pibake` command: build, clean, publish, pull, flash, prepare-data-disk, configure.

Each command runs the playbook of the same job from the checkout through ansible-runner, prints its events as
they come (task names, progress lines, timings, output files, recap) and exits with ansible-playbook's status.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from pibake_cli import api
from pibake_cli.events import EventPrinter


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-e", "--extra-var", dest="extra_vars", action="append", default=[], metavar="KEY=VALUE",
                        help="another variable for the playbook (repeatable)")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="print everything ansible-playbook prints; -vv and more also raise its verbosity")
    parser.add_argument("--check", action="store_true", help="run the playbook in check mode")
    parser.add_argument("--repo", help="the pibake.image checkout (default: the one pibake runs from, or $PIBAKE_REPO)")
    parser.add_argument("--timestamps", action="store_true", help="prefix each printed line with the elapsed time")
    parser.add_argument("--keep-artifacts", action="store_true",
                        help="keep ansible-runner's folder of event records and print its path")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pibake",
        description="Build, publish, pull and flash Raspberry Pi appliance images with the pibake.image collection.",
        epilog="Each command runs a playbook of the checkout (playbooks/*.yml); its exit status is the playbook's.",
    )
    parser.add_argument("--version", action="version", version="%(prog)s 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("build", help="build an image into deploy/ (playbooks/build-image.yml)")
    p.add_argument("--profile", default="cubeos", help="product profile, a folder of inventories/ (default: cubeos)")
    p.add_argument("--variant", default="dev", help="variant, e.g. dev or prod (default: dev)")
    p.add_argument("--version", dest="image_version", default="dev", help="version written into os.info (default: dev)")
    p.add_argument("--base", help="base image: debian[:release] (default), a local .img/.img.xz/.img.zst/.zip, or an https:// URL")
    p.add_argument("--base-sha256", help="sha256 of the --base download or file")
    _common(p)

    p = sub.add_parser("clean", help="tear down what killed builds left attached or mounted (playbooks/clean.yml)")
    p.add_argument("--persistent", action="store_true", help="also reap sessions kept on purpose (pibake_clean_persistent)")
    _common(p)

    p = sub.add_parser("publish", help="push deploy/ to an OCI registry (playbooks/publish.yml)")
    p.add_argument("--deploy-dir", help="folder to publish (default: deploy/)")
    p.add_argument("--registry", help="registry host[:port] (default: $PIBAKE_REGISTRY)")
    p.add_argument("--namespace", help="repository namespace in the registry")
    p.add_argument("--repository", help="repository name (default: NAME from os.info)")
    p.add_argument("--tag", help="tag (default: VERSION[-VARIANT] from os.info)")
    p.add_argument("--extra-tag", dest="extra_tags", action="append", default=[], help="another tag (repeatable)")
    p.add_argument("--form", dest="forms", action="append", choices=["image", "artifact"],
                   help="publish only this form (repeatable; default both)")
    _common(p)

    p = sub.add_parser("pull", help="pull a published image into a folder (playbooks/pull.yml)")
    p.add_argument("ref", help="what to pull: name:tag, name:tag-artifact or registry/ns/name@sha256:...")
    p.add_argument("--dest", help="destination folder (default: deploy-from-registry/)")
    p.add_argument("--registry", help="registry host[:port] (default: $PIBAKE_REGISTRY)")
    p.add_argument("--namespace", help="repository namespace in the registry")
    p.add_argument("--platform", help="platform of a multi-platform image form, e.g. linux/arm64")
    _common(p)

    p = sub.add_parser("flash", help="write an image to a whole disk, SYSTEM disk only (playbooks/flash.yml)")
    p.add_argument("--image", required=True, help="the image: .img, .img.xz or .img.zst")
    p.add_argument("--device", required=True, help="the whole disk, best /dev/disk/by-id/...")
    p.add_argument("--confirm", action="store_true", help="really write; without it pibake only checks and explains")
    p.add_argument("--new-disk-id", action="store_true", help="give the written disk fresh partition ids")
    p.add_argument("--no-bmap", dest="use_bmap", action="store_false", help="write every block, ignore the .bmap")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip reading the disk back")
    p.add_argument("--bmap", help="block map file (default: next to the image)")
    _common(p)

    p = sub.add_parser("prepare-data-disk", help="format a blank disk as OURBOX_DATA (playbooks/prepare-data-disk.yml)")
    p.add_argument("--device", required=True, help="the whole disk, best /dev/disk/by-id/...")
    p.add_argument("--force", action="store_true", help="format a disk that is not blank (never an OURBOX_DATA one)")
    _common(p)

    p = sub.add_parser("configure", help="apply the profile's roles to running devices (playbooks/configure-device.yml)")
    p.add_argument("--profile", default="cubeos", help="product profile whose roles to apply (default: cubeos)")
    p.add_argument("-i", "--inventory", required=True, help="inventory putting the devices into the group 'devices'")
    p.add_argument("--limit", help="only these hosts (an Ansible host pattern)")
    _common(p)
    return parser


def run(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    printer = EventPrinter(full=args.verbose > 0, timestamps=args.timestamps)
    common = dict(repo=args.repo, check=args.check, verbosity=max(0, args.verbose - 1), on_event=printer,
                  keep_artifacts=args.keep_artifacts)
    extravars = api.parse_extra_vars(args.extra_vars)
    if args.command == "build":
        result = api.build(profile=args.profile, variant=args.variant, version=args.image_version, base=args.base,
                           base_sha256=args.base_sha256, extravars=extravars, **common)
    elif args.command == "clean":
        result = api.clean(persistent=args.persistent, extravars=extravars, **common)
    elif args.command == "publish":
        result = api.publish(deploy_dir=args.deploy_dir, registry=args.registry, namespace=args.namespace,
                             repository=args.repository, tag=args.tag, extra_tags=args.extra_tags,
                             forms=args.forms or (), extravars=extravars, **common)
    elif args.command == "pull":
        result = api.pull(args.ref, dest=args.dest, registry=args.registry, namespace=args.namespace,
                          platform=args.platform, extravars=extravars, **common)
    elif args.command == "flash":
        result = api.flash(args.image, args.device, confirm=args.confirm, new_disk_id=args.new_disk_id,
                           use_bmap=args.use_bmap, verify=args.verify, bmap=args.bmap, extravars=extravars,
                           **common)
    elif args.command == "prepare-data-disk":
        result = api.prepare_data_disk(args.device, force=args.force, extravars=extravars, **common)
    else:
        result = api.configure(args.inventory, profile=args.profile, limit=args.limit, extravars=extravars, **common)
    if result.artifacts_dir:
        print(f"pibake: ansible-runner records kept in {result.artifacts_dir}")
    if result.rc != 0:
        why = "cancelled" if result.rc == 130 else f"failed ({result.status})"
        print(f"pibake: {args.command} {why}, exit status {result.rc}", file=sys.stderr)
    return result.rc


def main(argv: Optional[List[str]] = None) -> int:
    try:
        return run(argv)
    except api.PibakeCliError as err:
        print(f"pibake: {err}", file=sys.stderr)
        return 1
    except ImportError as err:
        print(f"pibake: {err.name or err} is missing; install the checkout's requirements (make venv).", file=sys.stderr)
        return 1
