#!/usr/bin/env bash
# A throw-away single-node Slurm cluster (Debian 12 packages: Slurm 22.05, munge, slurmdbd + MariaDB) for CI.
#
#   bash .ci/slurm.sh install   # apt packages, once per machine (~30 s; skipped when already installed)
#   bash .ci/slurm.sh up        # start munged, mariadbd, slurmdbd, slurmctld, slurmd; wait until the node is idle
#   bash .ci/slurm.sh down      # stop exactly the daemons `up` started, by the PIDs it recorded
#   export SLURM_CONF=/tmp/dataspex-slurm/slurm.conf    # what every client (sbatch, squeue, submitit) needs
#
# Needs root (slurmd launches jobs as their owner) and no systemd. Accounting (slurmdbd) is on on purpose:
# without it submitit cannot learn that a job was cancelled or killed, and a Hydra sweep waits for it forever.
# Environment: SLURM_DIR (state, logs, config; default /tmp/dataspex-slurm), SLURM_MEM_MB (node memory, 8000).
set -euo pipefail
D=${SLURM_DIR:-/tmp/dataspex-slurm}
NODE=$(hostname -s)
CONF=$D/slurm.conf
export SLURM_CONF=$CONF

say() { echo "[slurm.sh $(date +%T)] $*" >&2; }
need_root() { [ "$(id -u)" = 0 ] || { say "must run as root (slurmd has to be able to start jobs)"; exit 1; }; }

# retry <seconds> <command...>: until it succeeds or the deadline passes (each try limited to 5 s)
retry() {
  local until=$(( $(date +%s) + $1 )); shift
  while [ "$(date +%s)" -lt "$until" ]; do
    timeout 5 "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  return 1
}

install() {
  need_root
  local pkgs="slurmctld slurmd slurm-client slurmdbd munge mariadb-server"
  if dpkg-query -W -f='${Status}\n' $pkgs 2>/dev/null | grep -vq "install ok installed" \
      || [ "$(dpkg-query -W -f='${Status}\n' $pkgs 2>/dev/null | wc -l)" -ne 6 ]; then
    apt-get update -q
    # No systemd here: the packages' "could not start service" messages are expected; `up` starts the daemons.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $pkgs
  else
    say "Slurm packages already installed"
  fi
}

write_config() {
  rm -rf "$D"; mkdir -p "$D"/{state,spool,log,pids,mysql}
  # RealMemory must stay below what the machine has, or the node is marked INVAL.
  local mem=${SLURM_MEM_MB:-8000} have
  have=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
  [ "$mem" -lt "$have" ] || mem=$(( have * 3 / 4 ))
  cat > "$CONF" <<CONF
ClusterName=dataspexci
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/pids/slurmctld.pid
SlurmdPidFile=$D/pids/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
# no cgroups in a container
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
MinJobAge=600
KillWait=5
SchedulerParameters=sched_interval=2
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  # slurmdbd finds its config next to \$SLURM_CONF and refuses one that others can read.
  cat > "$D/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=$D/pids/slurmdbd.pid
LogFile=$D/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=dataspex-ci
StorageLoc=slurm_acct_db
CONF
  chmod 600 "$D/slurmdbd.conf"
}

# remember <name> <pid>: the PIDs `down` may stop (and only those)
remember() { echo "$2" > "$D/pids/$1.started"; }

start_munge() {
  # Debian's postinst creates the key; keep munge's default socket (slurmdbd clients always use it).
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
  mkdir -p "$D/munge" && chown munge:munge "$D/munge"
  runuser -u munge -- /usr/sbin/munged --pid-file="$D/munge/munged.pid" --log-file="$D/munge/munged.log" \
      --seed-file="$D/munge/munged.seed"
  retry 10 bash -c 'munge -n | unmunge' || { say "munged did not start"; cat "$D/munge/munged.log" >&2; return 1; }
  remember munged "$(cat "$D/munge/munged.pid")"
}

start_accounting() {
  local db=$D/mysql
  mariadb-install-db --user=root --datadir="$db/data" --auth-root-authentication-method=socket \
      > "$D/log/mariadb-install.log" 2>&1
  setsid mariadbd --user=root --datadir="$db/data" --socket="$db/mysql.sock" --pid-file="$db/mariadbd.pid" \
      --bind-address=127.0.0.1 --port=3306 --innodb-buffer-pool-size=32M --skip-log-bin \
      --log-error="$D/log/mariadbd.err" > /dev/null 2>&1 < /dev/null &
  remember mariadbd $!
  retry 30 mariadb -S "$db/mysql.sock" -e 'select 1' || { say "mariadbd did not start"; tail "$D/log/mariadbd.err" >&2; return 1; }
  mariadb -S "$db/mysql.sock" -e "CREATE DATABASE slurm_acct_db;
    CREATE USER 'slurm'@'localhost' IDENTIFIED BY 'dataspex-ci';
    CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'dataspex-ci';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
  /usr/sbin/slurmdbd
  retry 30 test -s "$D/pids/slurmdbd.pid" || { say "slurmdbd did not start"; tail "$D/log/slurmdbd.log" >&2; return 1; }
  remember slurmdbd "$(cat "$D/pids/slurmdbd.pid")"
  retry 30 sacctmgr -n show cluster || { say "slurmdbd does not answer"; tail "$D/log/slurmdbd.log" >&2; return 1; }
}

up() {
  need_root
  local t0; t0=$(date +%s%N)
  down quiet              # leftovers of an earlier `up` in this directory
  write_config
  start_munge
  start_accounting
  /usr/sbin/slurmctld -f "$CONF"
  retry 30 test -s "$D/pids/slurmctld.pid" || { say "slurmctld did not start"; tail "$D/log/slurmctld.log" >&2; return 1; }
  remember slurmctld "$(cat "$D/pids/slurmctld.pid")"
  /usr/sbin/slurmd -f "$CONF" -N "$NODE"
  retry 30 test -s "$D/pids/slurmd.pid" || { say "slurmd did not start"; tail "$D/log/slurmd.log" >&2; return 1; }
  remember slurmd "$(cat "$D/pids/slurmd.pid")"
  if ! retry 60 bash -c '[ "$(sinfo -h -o %t)" = idle ]'; then
    say "the node did not become idle"; sinfo -N -l >&2 || true
    tail -20 "$D/log/slurmctld.log" "$D/log/slurmd.log" >&2; return 1
  fi
  say "up in $(( ($(date +%s%N) - t0) / 1000000 )) ms: export SLURM_CONF=$CONF"
}

# stop <name...>: SIGTERM each recorded PID (if it still runs that program), wait, SIGKILL stragglers
stop() {
  local name pid pids=() names=()
  for name in "$@"; do
    [ -s "$D/pids/$name.started" ] || continue
    pid=$(cat "$D/pids/$name.started"); rm -f "$D/pids/$name.started"
    # after a reboot the PID may belong to something else: only signal the program we started
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || continue
    kill -TERM "$pid" 2>/dev/null && { pids+=("$pid"); names+=("$name"); }
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  for _ in $(seq 100); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break; sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && { say "SIGKILL $pid"; kill -KILL "$pid" 2>/dev/null; }; done
  [ "$QUIET" = 1 ] || say "stopped ${names[*]}"
}

QUIET=0
down() {
  [ -d "$D/pids" ] || return 0
  [ "${1:-}" = quiet ] && QUIET=1
  if [ -s "$D/pids/slurmctld.started" ] && [ "$QUIET" = 0 ]; then
    timeout 10 scancel --full --user=root 2>/dev/null || true   # leftover jobs of a failed test run
  fi
  stop slurmd slurmctld
  stop slurmdbd mariadbd munged
  QUIET=0
}

case "${1:-}" in
  install) install ;;
  up) up ;;
  down) down ;;
  *) echo "usage: $0 install|up|down" >&2; exit 2 ;;
esac
