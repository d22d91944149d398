#!/usr/bin/env bash
# Start a single-node SLURM cluster with accounting on this machine (Debian, as root), for tests and
# for trying the pipeline's SLURM path. Every daemon's PID goes to $SLURM_DEV_DIR/pids; stop.sh stops
# exactly those. Installs the Debian packages when they are missing.
set -euo pipefail
DIR=${SLURM_DEV_DIR:-/tmp/slurm-dev}
CLUSTER=devcluster
[ "$(id -u)" = 0 ] || { echo "start.sh: needs root (it starts munged, slurmctld and slurmd)" >&2; exit 1; }
if [ -s "$DIR/pids" ] && sinfo -h >/dev/null 2>&1; then echo "dev cluster already running ($DIR)"; exit 0; fi
if ! command -v slurmctld >/dev/null || ! command -v mariadbd >/dev/null; then
  echo "installing slurm-wlm munge slurmdbd mariadb-server ..."
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge slurmdbd mariadb-server >/dev/null
fi
if [ -f /etc/slurm/slurm.conf ] && ! grep -q "dev-cluster/start.sh" /etc/slurm/slurm.conf; then
  echo "start.sh: /etc/slurm/slurm.conf exists and is not ours; refusing to overwrite it" >&2; exit 1
fi
rm -rf "$DIR"; mkdir -p "$DIR"/{spool,state,log,db}
: > "$DIR/pids"
started() { echo "$1 $2" >> "$DIR/pids"; }
wait_for() { for _ in $(seq 100); do eval "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done; echo "start.sh: timed out waiting for: $1" >&2; exit 1; }

# munge refuses to run as root: run it as its own user, with its folders owned by it.
mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge
[ -f /etc/munge/munge.key ] || mungekey --create --keyfile /etc/munge/munge.key
chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground >"$DIR/log/munged.log" 2>&1 &
started munged $!
wait_for "munge -n </dev/null | unmunge"

# MariaDB from its own data directory, for slurmdbd (submitit needs sacct).
mariadb-install-db --user=root --datadir="$DIR/db" --auth-root-authentication-method=normal >"$DIR/log/mariadb-install.log" 2>&1
mariadbd --user=root --datadir="$DIR/db" --socket="$DIR/mysql.sock" --port=3307 --bind-address=127.0.0.1 \
  --pid-file="$DIR/mariadb.pid" >"$DIR/log/mariadb.log" 2>&1 &
started mariadbd $!
wait_for "mariadb -S $DIR/mysql.sock -e 'select 1'"
mariadb -S "$DIR/mysql.sock" -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
  CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"

HOST=$(hostname -s)
mkdir -p /etc/slurm
cat > /etc/slurm/slurmdbd.conf <<CONF
# written by slurm/dev-cluster/start.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3307
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
CONF
chmod 600 /etc/slurm/slurmdbd.conf
NODE=$(slurmd -C | head -1 | sed -e 's/NodeName=[^ ]*/NodeName='"$HOST"'/' -e 's/CPUs=[0-9]*/CPUs=4/' \
  -e 's/Boards=[0-9]* //' -e 's/SocketsPerBoard=[0-9]*/Sockets=1/' -e 's/CoresPerSocket=[0-9]*/CoresPerSocket=4/' -e 's/ThreadsPerCore=[0-9]*/ThreadsPerCore=1/')
cat > /etc/slurm/slurm.conf <<CONF
# written by slurm/dev-cluster/start.sh: a single-node development cluster
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerParameters=sched_interval=5,bf_interval=5
SlurmdParameters=config_overrides
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
MailProg=/bin/true
KillWait=5
MinJobAge=300
DefMemPerCPU=1024
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
$NODE NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
slurmdbd -D >"$DIR/log/slurmdbd.out" 2>&1 &
started slurmdbd $!
wait_for "sacctmgr -n show cluster"
sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
slurmctld -D -i >"$DIR/log/slurmctld.out" 2>&1 &
started slurmctld $!
wait_for "scontrol ping | grep -q UP"
slurmd -D >"$DIR/log/slurmd.out" 2>&1 &
started slurmd $!
wait_for "sinfo -h -o %T | grep -Eq 'idle|mixed'"
echo "dev cluster up: $(sinfo -h -o '%P %D %c %T'); state in $DIR"
