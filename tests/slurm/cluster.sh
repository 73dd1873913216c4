#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine for the SLURM tests: munged, slurmctld and slurmd
# from Debian's packages, run as plain background daemons (root, no systemd).
#   bash tests/slurm/cluster.sh up     install if needed, configure, start, wait until the node is idle
#   bash tests/slurm/cluster.sh down   stop the daemons
# Needs root and apt; prints why and exits 1 otherwise (the tests then skip).
set -euo pipefail
PIDFILES="/run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid"

down() {
  local pids; pids=$(cat $PIDFILES 2>/dev/null || true)
  [ -n "$pids" ] && kill $pids 2>/dev/null || true
  for _ in $(seq 50); do kill -0 $pids 2>/dev/null || break; sleep 0.2; done
  rm -f /run/slurmd.pid /run/slurmctld.pid
}

install() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return 0
  [ "$(id -u)" = 0 ] || { echo "not root: cannot install SLURM" >&2; exit 1; }
  command -v apt-get >/dev/null || { echo "no apt-get: cannot install SLURM" >&2; exit 1; }
  local added_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then  # keep the packages' postinst from starting services
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; added_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
  [ -z "$added_policy" ] || rm -f /usr/sbin/policy-rc.d
}

configure() {
  local host; host=$(hostname -s)
  getent hosts "$host" >/dev/null || echo "127.0.0.1 $host" >>/etc/hosts
  mkdir -p /etc/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm /run/munge
  chown slurm:slurm /var/lib/slurm/slurmctld /var/log/slurm
  # proctrack/linuxproc and task/none need no cgroups; cred_expire=10 lets a requeued job start
  # again after ~15 s instead of ~150 s.
  cat >/etc/slurm/slurm.conf <<CONF
ClusterName=gptdist-test
SlurmctldHost=$host
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=600
MailProg=/bin/true
SchedulerParameters=bf_interval=5,sched_interval=5
$(slurmd -C | head -n 1) State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  [ -s /etc/munge/munge.key ] || mungekey --create --force
  chown munge:munge /etc/munge /etc/munge/munge.key /run/munge
  chmod 600 /etc/munge/munge.key
}

up() {
  install
  configure
  pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
  pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
  for _ in $(seq 60); do
    if sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)$'; then sinfo; return 0; fi
    sleep 0.5
  done
  echo "the SLURM node is not idle after 30 s" >&2
  tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
  exit 1
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 [up|down]" >&2; exit 2 ;;
esac
