# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Run pibake's playbooks through ansible-runner and report what happened.

Every function returns a :class:`RunResult` whose ``rc`` is ansible-playbook's exit status. Events stream to
``on_event`` (an :class:`pibake_cli.events.EventPrinter` by default for the command line, nothing by default here).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sys
import tempfile
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

PLAYBOOKS = {
    "build": "build-image.yml",
    "clean": "clean.yml",
    "publish": "publish.yml",
    "pull": "pull.yml",
    "flash": "flash.yml",
    "prepare-data-disk": "prepare-data-disk.yml",
    "configure": "configure-device.yml",
}
OUTPUT_ACTIONS = ("pibake.image.deploy_outputs", "deploy_outputs")


class PibakeCliError(Exception):
    """A problem the user can fix; the message is one sentence saying what to do."""


@dataclasses.dataclass
class RunResult:
    """What a playbook run ended with."""

    rc: int
    status: str
    playbook: str
    outputs: List[str] = dataclasses.field(default_factory=list)
    stats: Dict[str, Any] = dataclasses.field(default_factory=dict)
    failures: List[str] = dataclasses.field(default_factory=list)
    artifacts_dir: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.rc == 0


# ---------------------------------------------------------------------------------------------------- the checkout
def _is_checkout(path: str) -> bool:
    galaxy = os.path.join(path, "galaxy.yml")
    if not (os.path.isfile(galaxy) and os.path.isdir(os.path.join(path, "playbooks"))):
        return False
    try:
        with open(galaxy, encoding="utf-8") as handle:
            text = handle.read()
    except OSError:
        return False
    return "namespace: pibake" in text and "name: image" in text


def find_repo(start: Optional[str] = None) -> str:
    """The pibake.image checkout to run: ``start``, ``$PIBAKE_REPO``, the checkout this package lives in, or the
    current folder or one of its parents."""
    candidates = []
    if start:
        candidates.append(start)
    elif os.environ.get("PIBAKE_REPO"):
        candidates.append(os.environ["PIBAKE_REPO"])
    else:
        candidates.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        here = os.path.abspath(os.getcwd())
        while True:
            candidates.append(here)
            parent = os.path.dirname(here)
            if parent == here:
                break
            here = parent
    for path in candidates:
        if _is_checkout(os.path.abspath(path)):
            return os.path.abspath(path)
    if start or os.environ.get("PIBAKE_REPO"):
        raise PibakeCliError(f"{start or os.environ['PIBAKE_REPO']} is not a pibake.image checkout (no galaxy.yml "
                             "for pibake.image with a playbooks folder); pass --repo with the checkout's path.")
    raise PibakeCliError("No pibake.image checkout found here or above; run pibake inside the checkout, or pass "
                         "--repo /path/to/checkout (or set PIBAKE_REPO).")


# ---------------------------------------------------------------------------------------------------- arguments
def parse_base(spec: Optional[str], sha256: Optional[str] = None) -> Optional[Dict[str, str]]:
    """Turn ``--base`` into ``pibake_base_image``.

    ``debian`` or ``debian:<release>``: the Debian arm64 base built with mmdebstrap;
    ``https://...`` or ``http://...``: a download, which needs ``sha256``;
    anything else: a local ``.img`` (or ``.img.xz``, ``.img.zst``, ``.zip``) file.
    """
    if not spec:
        if sha256:
            raise PibakeCliError("--base-sha256 needs --base (a URL or a local image file).")
        return None
    if spec == "debian" or spec.startswith("debian:"):
        base = {"type": "debian"}
        release = spec.partition(":")[2]
        if release:
            base["release"] = release
        if sha256:
            raise PibakeCliError("--base-sha256 does not apply to a Debian base, which is built and cached by recipe.")
        return base
    if spec.startswith(("https://", "http://")):
        if not sha256:
            raise PibakeCliError(f"A downloaded base needs its checksum: add --base-sha256 <sha256 of {spec}>.")
        return {"type": "url", "url": spec, "sha256": sha256}
    path = os.path.abspath(os.path.expanduser(spec))
    if not os.path.isfile(path):
        raise PibakeCliError(f"--base {spec}: no such file; give a local .img/.img.xz/.img.zst/.zip, a https:// URL "
                             "with --base-sha256, or debian[:release].")
    base = {"type": "path", "path": path}
    if sha256:
        base["sha256"] = sha256
    return base


def parse_extra_vars(items: Optional[Sequence[str]]) -> Dict[str, Any]:
    """``KEY=VALUE`` pairs (``-e``) into a dict; values stay strings, as with ansible-playbook's ``-e k=v``."""
    result: Dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PibakeCliError(f"-e {item}: write extra variables as KEY=VALUE.")
        result[key.strip()] = value
    return result


# ---------------------------------------------------------------------------------------------------- running
def run_playbook(playbook: str, *, repo: Optional[str] = None, inventory: Union[str, Sequence[str], None] = None,
                 extravars: Optional[Dict[str, Any]] = None, limit: Optional[str] = None, check: bool = False,
                 verbosity: int = 0, on_event: Optional[Callable[[dict], Any]] = None,
                 envvars: Optional[Dict[str, str]] = None, keep_artifacts: bool = False) -> RunResult:
    """Run one playbook of the checkout (a name from ``playbooks/`` or a path) with ansible-runner."""
    import ansible_runner  # imported here so that `pibake --help` stays fast

    repo = find_repo(repo)
    path = playbook if os.path.isabs(playbook) else os.path.join(repo, "playbooks", playbook)
    if not os.path.isfile(path):
        raise PibakeCliError(f"{path} does not exist; this checkout has no such playbook (update it?).")
    sources = [inventory] if isinstance(inventory, str) else list(inventory or [])
    for index, source in enumerate(sources):
        if not os.path.isabs(source):
            inside = os.path.join(repo, source)
            source = inside if not os.path.exists(source) and os.path.exists(inside) else os.path.abspath(source)
        if not os.path.exists(source):
            raise PibakeCliError(f"Inventory {source} does not exist; give an inventory file or a profile folder "
                                 f"from {repo}/inventories.")
        sources[index] = source
    inventory = sources[0] if len(sources) == 1 else (sources or None)
    # The ansible-playbook of this Python's environment (a virtualenv's bin/ is often not on PATH).
    bindir = os.path.dirname(sys.executable)
    path_dirs = os.environ.get("PATH", os.defpath).split(os.pathsep)
    if os.path.exists(os.path.join(bindir, "ansible-playbook")) and bindir not in path_dirs:
        os.environ["PATH"] = os.pathsep.join([bindir, *path_dirs])
    if shutil.which("ansible-playbook") is None:
        raise PibakeCliError("ansible-playbook is not installed here; install the checkout's requirements (make venv).")
    env = {"ANSIBLE_CONFIG": os.path.join(repo, "ansible.cfg"), "PYTHONUNBUFFERED": "1"}
    if not sys.stdout.isatty():
        env["ANSIBLE_NOCOLOR"] = "1"  # runner gives ansible-playbook a terminal; colour only when we have one too
    env.update(envvars or {})
    # Runner's own files (command line, event records) go to a private folder, removed unless asked to keep it.
    private = tempfile.mkdtemp(prefix="pibake-runner.")
    outputs: List[str] = []
    failures: List[str] = []
    cancelled = threading.Event()

    def handle(event: dict) -> bool:
        data = event.get("event_data") or {}
        res = data.get("res") if isinstance(data.get("res"), dict) else {}
        if event.get("event") == "runner_on_ok" and (data.get("resolved_action") in OUTPUT_ACTIONS
                                                     or data.get("task_action") in OUTPUT_ACTIONS):
            for item in res.get("written") or []:
                if isinstance(item, str) and item not in outputs:
                    outputs.append(item)
        if event.get("event") in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            failures.append(f"{data.get('task', '?')}: {res.get('msg', '') if isinstance(res, dict) else ''}".strip())
        if on_event is not None:
            on_event(event)
        return True

    previous = None
    if threading.current_thread() is threading.main_thread():
        def on_sigint(_signum, _frame):
            cancelled.set()
        previous = signal.signal(signal.SIGINT, on_sigint)
    cmdline = ["--check"] if check else []
    try:
        runner = ansible_runner.run(
            private_data_dir=private,
            project_dir=repo,
            playbook=path,
            inventory=inventory,
            extravars=extravars or {},
            envvars=env,
            limit=limit,
            verbosity=verbosity or None,
            cmdline=" ".join(cmdline) or None,
            quiet=True,
            event_handler=handle,
            cancel_callback=cancelled.is_set,
        )
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    rc = runner.rc if isinstance(runner.rc, int) else 1
    if runner.status == "canceled":
        rc = 130
    result = RunResult(rc=rc, status=runner.status, playbook=path, outputs=outputs, stats=runner.stats or {},
                       failures=failures, artifacts_dir=private if keep_artifacts else None)
    if not keep_artifacts:
        shutil.rmtree(private, ignore_errors=True)
    return result


# ---------------------------------------------------------------------------------------------------- commands
def build(profile: str = "cubeos", variant: str = "dev", version: str = "dev", base: Optional[str] = None,
          base_sha256: Optional[str] = None, extravars: Optional[Dict[str, Any]] = None, **kwargs) -> RunResult:
    """Build the image of ``profile`` (``inventories/<profile>``) into ``deploy/``."""
    repo = find_repo(kwargs.pop("repo", None))
    inventory = os.path.join(repo, "inventories", profile)
    if not os.path.isdir(inventory):
        raise PibakeCliError(f"There is no profile '{profile}'; pick one of: {', '.join(profiles(repo))}.")
    variables: Dict[str, Any] = {"variant": variant, "version": version}
    base_image = parse_base(base, base_sha256)
    if base_image:
        variables["pibake_base_image"] = base_image
    variables.update(extravars or {})
    return run_playbook(PLAYBOOKS["build"], repo=repo, inventory=inventory, extravars=variables, **kwargs)


def clean(persistent: bool = False, extravars: Optional[Dict[str, Any]] = None, **kwargs) -> RunResult:
    """Tear down whatever killed builds left attached or mounted."""
    variables: Dict[str, Any] = {"pibake_clean_persistent": True} if persistent else {}
    variables.update(extravars or {})
    return run_playbook(PLAYBOOKS["clean"], extravars=variables, **kwargs)


def publish(deploy_dir: Optional[str] = None, registry: Optional[str] = None, namespace: Optional[str] = None,
            repository: Optional[str] = None, tag: Optional[str] = None, extra_tags: Sequence[str] = (),
            forms: Sequence[str] = (), extravars: Optional[Dict[str, Any]] = None, **kwargs) -> RunResult:
    """Push ``deploy/`` to an OCI registry as the image form and the artifact form."""
    variables: Dict[str, Any] = {}
    if deploy_dir:
        variables["pibake_deploy_dir"] = os.path.abspath(deploy_dir)
    if registry:
        variables["pibake_registry"] = registry
    if namespace:
        variables["pibake_registry_namespace"] = namespace
    if repository:
        variables["pibake_publish_repository"] = repository
    if tag:
        variables["pibake_publish_tag"] = tag
    if extra_tags:
        variables["pibake_publish_extra_tags"] = list(extra_tags)
    if forms:
        variables["pibake_publish_forms"] = list(forms)
    variables.update(extravars or {})
    return run_playbook(PLAYBOOKS["publish"], extravars=variables, **kwargs)


def pull(ref: str, dest: Optional[str] = None, registry: Optional[str] = None, namespace: Optional[str] = None,
         platform: Optional[str] = None, extravars: Optional[Dict[str, Any]] = None, **kwargs) -> RunResult:
    """Pull a published image (either form) into a folder, verifying every blob."""
    variables: Dict[str, Any] = {"pibake_pull_ref": ref}
    if dest:
        variables["pibake_pull_dest"] = os.path.abspath(dest)
    if registry:
        variables["pibake_registry"] = registry
    if namespace:
        variables["pibake_registry_namespace"] = namespace
    if platform:
        variables["pibake_pull_platform"] = platform
    variables.update(extravars or {})
    return run_playbook(PLAYBOOKS["pull"], extravars=variables, **kwargs)


def flash(image: str, device: str, confirm: bool = False, new_disk_id: bool = False, use_bmap: bool = True,
          verify: bool = True, bmap: Optional[str] = None, extravars: Optional[Dict[str, Any]] = None,
          **kwargs) -> RunResult:
    """Write an image to a whole disk; without ``confirm`` only check the disk and say what would happen."""
    variables: Dict[str, Any] = {
        # a local file is made absolute; anything else (an OCI reference) goes through as given
        "image": os.path.abspath(image) if image and os.path.exists(image) else image,
        "device": device,
        "flash_confirm": bool(confirm),
        "flash_new_disk_id": bool(new_disk_id),
        "flash_use_bmap": bool(use_bmap),
        "flash_verify": bool(verify),
    }
    if bmap:
        variables["bmap"] = os.path.abspath(bmap)
    variables.update(extravars or {})
    return run_playbook(PLAYBOOKS["flash"], extravars=variables, **kwargs)


def prepare_data_disk(device: str, force: bool = False, extravars: Optional[Dict[str, Any]] = None,
                      **kwargs) -> RunResult:
    """Format a blank disk as the OURBOX_DATA disk."""
    variables: Dict[str, Any] = {"device": device, "force": bool(force)}
    variables.update(extravars or {})
    return run_playbook(PLAYBOOKS["prepare-data-disk"], extravars=variables, **kwargs)


def configure(devices: str, profile: str = "cubeos", extravars: Optional[Dict[str, Any]] = None,
              **kwargs) -> RunResult:
    """Apply ``profile``'s roles to the running devices of the inventory ``devices`` (group ``devices``)."""
    repo = find_repo(kwargs.pop("repo", None))
    profile_dir = os.path.join(repo, "inventories", profile)
    if not os.path.isdir(profile_dir):
        raise PibakeCliError(f"There is no profile '{profile}'; pick one of: {', '.join(profiles(repo))}.")
    return run_playbook(PLAYBOOKS["configure"], repo=repo, inventory=[profile_dir, devices],
                        extravars=dict(extravars or {}), **kwargs)


def profiles(repo: Optional[str] = None) -> List[str]:
    """The product profiles of the checkout (folders of ``inventories/``)."""
    folder = os.path.join(find_repo(repo), "inventories")
    return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)) and not d.startswith("."))
