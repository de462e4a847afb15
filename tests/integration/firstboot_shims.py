# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""PATH shims for running pibake-firstboot without Docker or systemd (host tests and the molecule scenario).

The docker shim logs every call to $SHIM_DIR/calls.log and simulates a swarm: ``info``, ``swarm init``,
``stack deploy`` (SIGKILLs its caller - a power cut - when $SHIM_KILL_DEPLOY names the stack), ``stack services``
and ``ps`` (a stack named by $SHIM_UNHEALTHY never gets healthy), ``compose version``, ``compose ... up``. LOG_SHIM only logs its name and arguments.
"""

DOCKER_SHIM = r"""#!/bin/sh
# Fake docker CLI: logs every call, keeps swarm and stack state in $SHIM_DIR.
echo "docker $*" >> "$SHIM_DIR/calls.log"
case "$1 $2" in
  "info --format")
    case "$3" in
      *ServerVersion*) echo 26.1.5 ;;
      *Swarm*) cat "$SHIM_DIR/swarm" 2>/dev/null || echo inactive ;;
    esac ;;
  "swarm init")
    echo active > "$SHIM_DIR/swarm"; echo "Swarm initialized" ;;
  "stack deploy")
    eval "name=\${$#}"
    if [ "${SHIM_KILL_DEPLOY:-}" = "$name" ]; then kill -9 "$PPID"; sleep 5; fi
    echo "$name" >> "$SHIM_DIR/deployed"; echo "Creating service ${name}_web"
    env | grep -E '^(JWT_SECRET|FROM_DOTENV)=' | sed "s/^/$name env /" >> "$SHIM_DIR/calls.log" ;;
  "stack services")
    if grep -qx "$3" "$SHIM_DIR/deployed" 2>/dev/null; then
      if [ "${SHIM_UNHEALTHY:-}" = "$3" ]; then echo "${3}_web 0/1"; else echo "${3}_web 1/1"; fi
    fi ;;
  "ps --filter")
    name=${3#label=com.docker.stack.namespace=}
    if [ "${SHIM_UNHEALTHY:-}" = "$name" ]; then echo "${name}_web.1 Up 2 seconds (health: starting)";
    else echo "${name}_web.1 Up 9 seconds (healthy)"; fi ;;
  "ps -a")
    name=${4#label=com.docker.compose.project=}
    if grep -qx "$name" "$SHIM_DIR/deployed" 2>/dev/null; then
      if [ "${SHIM_UNHEALTHY:-}" = "$name" ]; then echo "${name}-app-1 exited Exited (1) 3 seconds ago";
      else echo "${name}-app-1 running Up 4 seconds (healthy)"; fi
    fi ;;
  "compose version")
    echo "Docker Compose version v2.26.1" ;;
  "compose --file")
    name=$5; echo "$name" >> "$SHIM_DIR/deployed"
    env | grep -E '^(JWT_SECRET|FROM_DOTENV)=' | sed "s/^/$name env /" >> "$SHIM_DIR/calls.log" ;;
  *) echo "unexpected docker call: $*" >&2; exit 1 ;;
esac
"""

LOG_SHIM = """#!/bin/sh
echo "$(basename "$0") $*" >> "$SHIM_DIR/calls.log"
"""
