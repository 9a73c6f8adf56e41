#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine, for tests/test_slurm.py and CI.
#
# Installs Debian's munge, slurmctld, slurmd and slurm-client when missing (no slurmdbd),
# writes /etc/slurm/slurm.conf and gres.conf from the templates beside this script (this
# host as the only node, with its real CPUs and memory and as many pretend GPUs as CPUs,
# partition "local"), creates a munge key, starts munged, slurmctld and slurmd without systemd, and
# waits until `sinfo` shows the node ready.  Safe to re-run: it does nothing when the
# cluster is already up with the same configuration, and restarts only the daemons whose
# configuration changed.  Needs root (re-runs itself with sudo otherwise).
#
#   VAEFAIL_SLURM_TIMEOUT   seconds to wait for the node (default 90)
#
# It refuses to touch a slurm.conf that it did not write (a real site's).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ "$(id -u)" -ne 0 ]; then
  exec sudo --preserve-env=VAEFAIL_SLURM_TIMEOUT bash "$0" "$@"
fi
export PATH="/usr/local/sbin:/usr/sbin:/sbin:$PATH"

CONF_DIR=/etc/slurm
SPOOL=/var/lib/slurm
LOGDIR=/var/log/slurm
PARTITION=local
MARKER="vaefail-local-slurm"
TIMEOUT=${VAEFAIL_SLURM_TIMEOUT:-90}
say() { echo "== local SLURM: $*"; }

# --- packages ------------------------------------------------------------------------------
missing=()
for pkg in munge slurmctld slurmd slurm-client; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} from Debian's packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

HOST=$(hostname -s)
# "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105"
HARDWARE=$(slurmd -C | head -n 1 | sed -e 's/^NodeName=[^ ]* //')
case "$HARDWARE" in
  *CPUs=*RealMemory=*) ;;
  *) echo "start-local-slurm.sh: cannot read this node's hardware from 'slurmd -C': $HARDWARE" >&2; exit 1 ;;
esac
CPUS=$(echo "$HARDWARE" | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p')
# Pretend GPUs, one per CPU: SLURM needs a file for each; links to /dev/null will do.
GPU_DIR=/run/vaefail-slurm
mkdir -p "$GPU_DIR"
for ((g = 0; g < CPUS; g++)); do ln -sfn /dev/null "$GPU_DIR/gpu$g"; done
GPU_FILES="$GPU_DIR/gpu[0-$((CPUS - 1))]"
SLURM_USER=root
getent passwd slurm >/dev/null && SLURM_USER=slurm

# --- configuration -------------------------------------------------------------------------
for f in slurm.conf gres.conf; do
  if [ -e "$CONF_DIR/$f" ] && ! grep -q "$MARKER" "$CONF_DIR/$f"; then
    echo "start-local-slurm.sh: $CONF_DIR/$f exists and was not written by this script;" \
         "leaving this machine's SLURM alone (move that file away to use the test cluster)" >&2
    exit 1
  fi
done

render() {
  sed -e "s|@HOST@|$HOST|g" -e "s|@HARDWARE@|$HARDWARE|g" -e "s|@SLURM_USER@|$SLURM_USER|g" \
      -e "s|@SPOOL@|$SPOOL|g" -e "s|@LOGDIR@|$LOGDIR|g" -e "s|@PARTITION@|$PARTITION|g" \
      -e "s|@GPUS@|$CPUS|g" -e "s|@GPU_FILES@|$GPU_FILES|g" "$1"
}
changed=0
mkdir -p "$CONF_DIR"
for f in slurm.conf gres.conf; do
  new=$(render "$HERE/$f.in")
  if [ ! -e "$CONF_DIR/$f" ] || [ "$new" != "$(cat "$CONF_DIR/$f")" ]; then
    printf '%s\n' "$new" > "$CONF_DIR/$f"
    chmod 644 "$CONF_DIR/$f"
    changed=1
  fi
done

install -d -o "$SLURM_USER" -g "$SLURM_USER" -m 0755 "$SPOOL" "$SPOOL/slurmctld" "$LOGDIR"
install -d -m 0755 "$SPOOL/slurmd"

if [ ! -s /etc/munge/munge.key ]; then
  say "creating a munge key"
  install -d -o munge -g munge -m 0700 /etc/munge
  if command -v mungekey >/dev/null; then
    mungekey --create --keyfile=/etc/munge/munge.key --force
  else
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge

# --- daemons -------------------------------------------------------------------------------
# alive NAME PIDFILE: the pid file names a running process called NAME
alive() {
  local pid
  [ -s "$2" ] || return 1
  pid=$(cat "$2")
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]
}

stop() {  # stop NAME PIDFILE: end the daemon this script started earlier, by its pid
  local pid i
  alive "$1" "$2" || return 0
  pid=$(cat "$2")
  say "restarting $1 (pid $pid) for the new configuration"
  kill "$pid"
  for i in $(seq 50); do alive "$1" "$2" || return 0; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
}

if ! alive munged /run/munge/munged.pid; then
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged
fi
for i in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
munge -n | unmunge >/dev/null || { echo "start-local-slurm.sh: munge does not work" >&2; exit 1; }

if [ "$changed" = 1 ]; then
  stop slurmd /run/slurmd.pid
  stop slurmctld /run/slurmctld.pid
fi
if ! alive slurmctld /run/slurmctld.pid; then
  say "starting slurmctld"
  /usr/sbin/slurmctld
fi
for i in $(seq 50); do scontrol ping 2>/dev/null | grep -q "UP" && break; sleep 0.2; done
if ! alive slurmd /run/slurmd.pid; then
  say "starting slurmd"
  /usr/sbin/slurmd
fi

# --- wait for the node ---------------------------------------------------------------------
resumed=0
state=""
for i in $(seq "$((TIMEOUT * 2))"); do
  state=$(sinfo -h -N -n "$HOST" -o %T 2>/dev/null | head -n 1 || true)
  case "$state" in
    idle|mixed|allocated|completing)
      say "node $HOST is $state (partition $PARTITION: $(sinfo -h -p "$PARTITION" -o '%c CPUs, %m MB, %G'))"
      exit 0 ;;
    drained|draining|down|drained\*|down\*)
      if [ "$resumed" = 0 ] && [ "$i" -gt 10 ]; then
        scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true
        resumed=1
      fi ;;
  esac
  sleep 0.5
done
echo "start-local-slurm.sh: node $HOST is not ready after ${TIMEOUT}s (state: '${state:-unknown}')" >&2
sinfo -N -l >&2 || true
scontrol show node "$HOST" >&2 || true
tail -n 20 "$LOGDIR/slurmctld.log" "$LOGDIR/slurmd.log" >&2 || true
exit 1
