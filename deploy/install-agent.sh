#!/usr/bin/env bash
# Install (or upgrade, or remove) the lepton-edge agent on an edge box.
#
#   sudo deploy/install-agent.sh --controller URL --token TOKEN [options]
#   sudo deploy/install-agent.sh --uninstall [--purge]
#
# Creates the system user `lepton` (systemd-sysusers), a venv in /opt/lepton/venv with the agent
# and the inference runtimes this box can use, enrolls with the controller (which writes
# /etc/lepton/agent.toml and pins the controller's key), installs lepton-agent.service and
# enables and (re)starts it. Running it again upgrades the agent in place and keeps the
# enrollment; it enrolls again only when given a --token.
#
# Options:
#   --controller URL         controller URL, e.g. https://controller.example:8080
#   --token TOKEN            one-time enrollment token (lepton-controller token --enroll)
#   --device-id ID           device id (default: derived from /etc/machine-id)
#   --ca-file FILE           CA that signed the broker's (and controller's) TLS certificate;
#                            copied to /etc/lepton/ca.pem and pinned by the agent
#   --runtimes LIST          pip extras for inference, comma-separated: onnx, litert,
#                            openvino, tflite-runtime, or none (default: onnx,litert where
#                            this CPU has wheels for them)
#   --source SPEC            what pip installs: a checkout, a wheel or a requirement
#                            (default: this checkout if run from one, else lepton-edge)
#   --pip-args "ARGS"        extra pip arguments, e.g. "--no-index --find-links /media/wheels"
#   --python PYTHON          interpreter for the venv, >= 3.11 (default: python3)
#   --system-site-packages   let the venv see OS Python packages (e.g. JetPack's onnxruntime-gpu)
#   --no-start               enable the service but do not start it now
#   --root DIR               install into the system mounted at DIR (tests, image building):
#                            systemd is not asked to start anything, only to enable the unit.
#                            A venv is not relocatable: run without --root inside a chroot to
#                            build an image that boots.
#   --uninstall              stop and remove the service and the venv (keeps /etc/lepton and
#                            /var/lib/lepton: re-installing resumes the same device)
#   --purge                  with --uninstall: also remove /etc/lepton and /var/lib/lepton
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
UNIT=lepton-agent.service
ROOT=/
CONTROLLER="" TOKEN="" DEVICE_ID="" CA_FILE="" RUNTIMES=auto SOURCE="" PIP_ARGS=""
PYTHON=python3 SYSTEM_SITE=0 START=1 UNINSTALL=0 PURGE=0

die() { echo "install-agent.sh: error: $*" >&2; exit 2; }
say() { echo "==> $*"; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
  case $1 in
    --controller) CONTROLLER=${2:?--controller needs a URL}; shift ;;
    --token) TOKEN=${2:?--token needs a value}; shift ;;
    --device-id) DEVICE_ID=${2:?--device-id needs a value}; shift ;;
    --ca-file) CA_FILE=${2:?--ca-file needs a path}; shift ;;
    --runtimes) RUNTIMES=${2:?--runtimes needs a list}; shift ;;
    --source) SOURCE=${2:?--source needs a value}; shift ;;
    --pip-args) PIP_ARGS=${2?--pip-args needs a value}; shift ;;
    --python) PYTHON=${2:?--python needs an interpreter}; shift ;;
    --system-site-packages) SYSTEM_SITE=1 ;;
    --no-start) START=0 ;;
    --root) ROOT=${2:?--root needs a directory}; shift ;;
    --uninstall) UNINSTALL=1 ;;
    --purge) PURGE=1 ;;
    -h|--help) usage 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done

[ -d "$ROOT" ] || die "--root $ROOT is not a directory"
ROOT=$(cd "$ROOT" && pwd)
R=${ROOT%/}  # prefix for every path below ("" on a live system)
LIVE=$([ "$ROOT" = / ] && echo 1 || echo 0)
[ "$LIVE" = 0 ] || [ "$(id -u)" -eq 0 ] || die "run as root (sudo), or use --root DIR"
[ "$PURGE" = 0 ] || [ "$UNINSTALL" = 1 ] || die "--purge only goes with --uninstall"

VENV=/opt/lepton/venv
ETC=/etc/lepton
UNIT_DIR=/etc/systemd/system

systemctl_() {  # systemctl on the live system, or offline on the root
  if [ "$LIVE" = 1 ]; then systemctl "$@"; else systemctl --root="$ROOT" "$@"; fi
}

# --- uninstall ------------------------------------------------------------------------------

if [ "$UNINSTALL" = 1 ]; then
  if [ -f "$R$UNIT_DIR/$UNIT" ]; then
    say "disabling $UNIT"
    if [ "$LIVE" = 1 ]; then systemctl disable --now "$UNIT" || true; else systemctl_ disable "$UNIT" || true; fi
  fi
  rm -rf "$R$UNIT_DIR/$UNIT" "$R$UNIT_DIR/$UNIT.d"
  if [ -f "$R$UNIT_DIR/lepton-controller.service" ]; then
    say "kept /opt/lepton and the lepton user's sysusers entry: lepton-controller.service uses them"
  else
    rm -rf "$R/opt/lepton" "$R/usr/lib/sysusers.d/lepton.conf"
  fi
  [ "$LIVE" = 0 ] || systemctl daemon-reload
  if [ "$PURGE" = 1 ]; then
    say "purging $ETC and /var/lib/lepton"
    rm -rf "$R$ETC" "$R/var/lib/lepton"
  else
    say "kept $ETC and /var/lib/lepton (enrollment, artifacts); --purge removes them"
  fi
  say "the lepton agent is uninstalled (the system user 'lepton' stays, as users do)"
  exit 0
fi

# --- checks ---------------------------------------------------------------------------------

command -v "$PYTHON" >/dev/null || die "$PYTHON not found: install Python >= 3.11 or pass --python"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "$PYTHON is $("$PYTHON" -V 2>&1); the agent needs Python >= 3.11 (pass --python)"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
  || die "$PYTHON cannot make venvs: apt-get install python3-venv"
[ -z "$CA_FILE" ] || [ -f "$CA_FILE" ] || die "--ca-file $CA_FILE does not exist"
if [ -n "$TOKEN" ] && [ -z "$CONTROLLER" ]; then die "--token needs --controller"; fi
if [ -z "$TOKEN" ] && [ ! -f "$R$ETC/agent.toml" ]; then
  die "this box is not enrolled yet: pass --controller URL --token TOKEN"
fi

if [ -z "$SOURCE" ]; then
  if [ -f "$HERE/../pyproject.toml" ]; then SOURCE=$(cd "$HERE/.." && pwd); else SOURCE=lepton-edge; fi
fi

if [ "$RUNTIMES" = auto ]; then
  # Wheels of onnxruntime and ai-edge-litert exist for these CPUs; 32-bit ARM has neither.
  case $(uname -m) in
    x86_64|amd64|aarch64|arm64) RUNTIMES=onnx,litert ;;
    *) RUNTIMES=none; echo "warning: no prebuilt inference runtime for $(uname -m); pass --runtimes" >&2 ;;
  esac
fi
EXTRAS=agent
for runtime in ${RUNTIMES//,/ }; do
  case $runtime in
    onnx|litert|openvino|tflite-runtime) EXTRAS+=",$runtime" ;;
    none) ;;
    *) die "--runtimes: unknown runtime '$runtime' (use onnx, litert, openvino, tflite-runtime or none)" ;;
  esac
done

# --- user, venv, package --------------------------------------------------------------------

say "system user lepton (systemd-sysusers)"
install -D -m 0644 "$HERE/systemd/lepton.sysusers" "$R/usr/lib/sysusers.d/lepton.conf"
mkdir -p "$R/etc"
if [ "$LIVE" = 1 ]; then systemd-sysusers lepton.conf; else systemd-sysusers --root="$ROOT" lepton.conf; fi
GID=$(awk -F: '$1 == "lepton" { print $3 }' "$R/etc/group")

if [ ! -x "$R$VENV/bin/python" ] || ! "$R$VENV/bin/python" -c '' 2>/dev/null; then
  say "creating $VENV"
  rm -rf "$R$VENV"
  venv_args=()
  [ "$SYSTEM_SITE" = 0 ] || venv_args+=(--system-site-packages)
  "$PYTHON" -m venv "${venv_args[@]}" "$R$VENV"
fi
if [ -d "$SOURCE" ]; then
  SPEC="$(cd "$SOURCE" && pwd)[$EXTRAS]"
elif [[ $SOURCE == *.whl ]]; then
  SPEC="lepton-edge[$EXTRAS] @ file://$(cd "$(dirname "$SOURCE")" && pwd)/$(basename "$SOURCE")"
else  # a requirement: the extras go between the name and the version ("lepton-edge[agent]==0.2")
  name=${SOURCE%%[=<>!~ ]*}
  SPEC="$name[$EXTRAS]${SOURCE#"$name"}"
fi
say "installing $SPEC"
# shellcheck disable=SC2086 # PIP_ARGS is a list of words on purpose
"$R$VENV/bin/python" -m pip install --disable-pip-version-check -q --upgrade $PIP_ARGS "$SPEC"
AGENT="$R$VENV/bin/lepton-agent"
say "installed $("$AGENT" --version)"

# --- configuration and enrollment -----------------------------------------------------------

install -d -m 0750 -g "$GID" "$R$ETC"
if [ -n "$CA_FILE" ]; then
  install -m 0644 "$CA_FILE" "$R$ETC/ca.pem"
fi
if [ -n "$TOKEN" ]; then
  say "enrolling with $CONTROLLER"
  enroll=(enroll --controller "$CONTROLLER" --token "$TOKEN" --config "$ETC/agent.toml" --root "$ROOT")
  [ -z "$DEVICE_ID" ] || enroll+=(--device-id "$DEVICE_ID")
  [ -z "$CA_FILE" ] || enroll+=(--ca-file "$ETC/ca.pem")
  "$AGENT" "${enroll[@]}" || exit $?
else
  say "keeping the enrollment in $ETC/agent.toml"
fi
chgrp "$GID" "$R$ETC/agent.toml"
chmod 0640 "$R$ETC/agent.toml"

# --- systemd --------------------------------------------------------------------------------

say "installing $UNIT"
install -D -m 0644 "$HERE/systemd/$UNIT" "$R$UNIT_DIR/$UNIT"
# RestartSteps=/RestartMaxDelaySec= (growing restart delay) exist from systemd 254 on.
SYSTEMD_VERSION=${LEPTON_SYSTEMD_VERSION:-$(systemctl --version | awk 'NR == 1 { print $2 }')}
if [ "${SYSTEMD_VERSION%%[!0-9]*}" -ge 254 ]; then
  install -D -m 0644 "$HERE/systemd/restart-backoff.conf" "$R$UNIT_DIR/$UNIT.d/restart-backoff.conf"
else
  rm -rf "$R$UNIT_DIR/$UNIT.d/restart-backoff.conf"
fi

if [ "$LIVE" = 1 ]; then
  systemctl daemon-reload
  systemctl enable "$UNIT"
  if [ "$START" = 1 ]; then
    # restart, not start: after an upgrade the new code must run.
    systemctl restart "$UNIT"
    say "started; follow it with: journalctl -u $UNIT -f"
  fi
else
  systemctl_ enable "$UNIT"
  say "enabled in $ROOT; systemd there starts $UNIT at boot"
fi
