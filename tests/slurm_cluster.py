"""A real single-node SLURM cluster on 127.0.0.1, for tests: munged, slurmctld and slurmd, no systemd.

Needs root and the Debian packages slurmctld, slurmd, slurm-client and munge. Everything the
cluster writes (slurm.conf, state, spool, logs) lies in a directory of the caller, except two
things in /run: munged's socket in /run/munge (munged insists), and the link /run/slurm/conf to
that directory. Clients find the cluster through ``SLURM_CONF`` in :attr:`SlurmCluster.env`, but
the ``srun`` that Snakemake's job step runs inside each job does not see it: the jobstep plugin
drops every ``SLURM_*`` variable but the job's ids. That srun finds slurm.conf where SLURM clients
look next, after /etc/slurm/slurm.conf: /run/slurm/conf, the config cache of a configless slurmd.
On exit every job is cancelled, every daemon this module started is stopped by its PID (SIGTERM,
then SIGKILL) and the link is removed; nothing else is touched. A test process killed before its
exit leaves the link, and daemons started in their own session outlive it: the next cluster finds
the link's directory by its owner file, and when that owner is dead stops the daemons that run on
its slurm.conf and removes the link (see :func:`_clear_orphaned_cluster`).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

SBIN = os.pathsep.join(["/usr/sbin", "/sbin"])
MUNGE_DIR = Path("/run/munge")
MUNGE_KEY = Path("/etc/munge/munge.key")
CONF_CACHE = Path("/run/slurm/conf")
OWNER_FILE = "owner"  # "<pid> <start time>" of the test process that started the cluster


def find_program(name: str) -> str | None:
    """``name`` on PATH or in the sbin directories (daemons live there, and root's PATH may lack them)."""
    return shutil.which(name) or shutil.which(name, path=SBIN)


def slurmctld_path() -> str | None:
    return find_program("slurmctld")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mem_total_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


@dataclass
class SlurmCluster:
    directory: Path
    conf: Path
    node: str
    partition: str
    gpu_model: str
    env: dict = field(default_factory=dict)  # os.environ plus SLURM_CONF

    def run(self, *command: str, timeout: float = 30) -> str:
        """Run a SLURM client command against this cluster; its stdout."""
        return subprocess.run(list(command), env=self.env, capture_output=True, text=True, check=True,
                              timeout=timeout).stdout

    def log(self, daemon: str = "slurmctld") -> str:
        path = self.directory / f"{daemon}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _process_identity(pid: int) -> str:
    """``"<pid> <start time>"``, or ``""`` for no such process: a PID alone is reused once its process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return ""
    return f"{pid} {stat.rsplit(')', 1)[1].split()[19]}"  # field 22, starttime; the name may hold spaces


def _pids_with_argument(argument: str) -> list[int]:
    """The PIDs of the processes that have ``argument`` as one word of their command line."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                words = (entry / "cmdline").read_bytes().split(b"\0")
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
            if os.fsencode(argument) in words:
                pids.append(int(entry.name))
    return pids


def _munge_tag(pid: int) -> str:
    """The name of the munged files (socket, pid, log, seed) of the cluster that test process ``pid`` starts."""
    return f"emoprobe-test-{pid}"


def _clear_orphaned_cluster() -> None:
    """Stop the daemons of a cluster whose test process died before its cleanup, and drop its link.

    Only a link at :data:`CONF_CACHE` to a directory this module made (its slurm.conf names the
    cluster ``emoprobe-test``) is cleared, and only when the test process recorded in its
    :data:`OWNER_FILE` is no longer running; a configless slurmd's own cache, a live cluster of
    another test run, or a link to anything else stay, and :func:`slurm_cluster` refuses to start.
    """
    if not CONF_CACHE.is_symlink():
        return
    directory = CONF_CACHE.readlink()
    conf, owner = directory / "slurm.conf", directory / OWNER_FILE
    if directory.exists() and not (conf.exists() and "ClusterName=emoprobe-test\n" in conf.read_text()):
        return
    recorded = owner.read_text().strip() if owner.exists() else ""
    if recorded and _process_identity(int(recorded.split()[0])) == recorded:
        return
    orphans = _pids_with_argument(str(conf))  # slurmctld and slurmd, started with -f
    if recorded:
        orphans += _pids_with_argument(f"--pid-file={MUNGE_DIR / _munge_tag(int(recorded.split()[0]))}.pid")
    for pid in orphans:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if recorded:
        _remove_munge_files(_munge_tag(int(recorded.split()[0])))
    CONF_CACHE.unlink()


def _remove_munge_files(tag: str) -> None:
    for suffix in (".socket", ".socket.lock", ".pid", ".log", ".seed"):
        (MUNGE_DIR / f"{tag}{suffix}").unlink(missing_ok=True)


def _prepare_munge() -> None:
    """munged wants a key owned by munge, mode 0400, and a socket directory owned by munge."""
    munge = pwd.getpwnam("munge")
    if not MUNGE_KEY.exists():
        MUNGE_KEY.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chown(MUNGE_KEY.parent, munge.pw_uid, munge.pw_gid)
        mungekey = find_program("mungekey")
        if mungekey:
            subprocess.run([mungekey, "--create", "--keyfile", str(MUNGE_KEY)], check=True)
        else:
            MUNGE_KEY.write_bytes(os.urandom(1024))
    os.chown(MUNGE_KEY, munge.pw_uid, munge.pw_gid)
    os.chmod(MUNGE_KEY, 0o400)
    MUNGE_DIR.mkdir(mode=0o755, exist_ok=True)
    os.chown(MUNGE_DIR, munge.pw_uid, munge.pw_gid)
    os.chmod(MUNGE_DIR, 0o755)


def _slurm_conf(directory: Path, node: str, partition: str, gpu_model: str, munge_socket: Path) -> str:
    cpus = os.cpu_count() or 1
    memory = int(mem_total_mb() * 0.9)  # a bit below the machine's, or slurmd drains the node
    return f"""\
ClusterName=emoprobe-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={directory}/state
SlurmdSpoolDir={directory}/spool
SlurmctldPidFile={directory}/slurmctld.pid
SlurmdPidFile={directory}/slurmd.pid
SlurmctldLogFile={directory}/slurmctld.log
SlurmdLogFile={directory}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups on this kind of machine
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# no slurmdbd: sacct cannot answer, squeue does (finished jobs stay visible MinJobAge seconds:
# longer than the whole test's run, so the test can list every job it submitted)
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=7200
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
# one GPU of type {gpu_model} that is /dev/null: lets jobs ask for --gpus={gpu_model}:1
GresTypes=gpu
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} Gres=gpu:{gpu_model}:1 State=UNKNOWN
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _stop(process: subprocess.Popen, grace: float = 15) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait(predicate, timeout: float, what: str, cluster: SlurmCluster, processes: list) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"{Path(process.args[0]).name} exited with {process.returncode} while waiting "
                                   f"for {what}\n{cluster.log('slurmctld')[-3000:]}\n{cluster.log('slurmd')[-3000:]}")
        try:
            if predicate():
                return
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}\n"
                               f"{cluster.log('slurmctld')[-3000:]}\n{cluster.log('slurmd')[-3000:]}")
        time.sleep(0.5)


@contextmanager
def slurm_cluster(directory: Path, partition: str = "debug", gpu_model: str = "testgpu",
                  timeout: float = 60) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd for one node; yield the cluster once the node is idle."""
    if os.geteuid() != 0:
        raise RuntimeError("a test SLURM cluster needs root (munged runs as munge, slurmd as root)")
    programs = {name: find_program(name) for name in ("munged", "slurmctld", "slurmd")}
    if missing := [name for name, path in programs.items() if path is None]:
        raise RuntimeError(f"not installed: {', '.join(missing)} (apt-get install slurmctld slurmd slurm-client munge)")

    if Path("/etc/slurm/slurm.conf").exists():
        raise RuntimeError("/etc/slurm/slurm.conf exists: jobs would find that cluster's config, not this one's")
    _clear_orphaned_cluster()
    if CONF_CACHE.exists() or CONF_CACHE.is_symlink():
        raise RuntimeError(f"{CONF_CACHE} exists: a configless slurmd runs here, whose config jobs would find")
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool"):
        (directory / sub).mkdir(exist_ok=True)
    node = socket.gethostname().split(".")[0]
    _prepare_munge()
    # our own munged on our own socket: a munged of the machine, if any, is left alone
    tag = _munge_tag(os.getpid())
    munge_socket = MUNGE_DIR / f"{tag}.socket"
    conf = directory / "slurm.conf"
    conf.write_text(_slurm_conf(directory, node, partition, gpu_model, munge_socket))
    (directory / "gres.conf").write_text(f"AutoDetect=off\nNodeName={node} Name=gpu Type={gpu_model} File=/dev/null\n")
    (directory / OWNER_FILE).write_text(_process_identity(os.getpid()))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = SlurmCluster(directory, conf, node, partition, gpu_model, env)

    processes: list[subprocess.Popen] = []
    try:
        CONF_CACHE.parent.mkdir(exist_ok=True)
        CONF_CACHE.symlink_to(directory)

        def start(command: list[str], log: str, **kwargs) -> subprocess.Popen:
            with open(directory / log, "ab") as out:
                process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                           stderr=subprocess.STDOUT, start_new_session=True, **kwargs)
            processes.append(process)
            return process

        start([programs["munged"], "--foreground", f"--socket={munge_socket}", f"--key-file={MUNGE_KEY}",
               f"--pid-file={MUNGE_DIR / tag}.pid", f"--log-file={MUNGE_DIR / tag}.log",
               f"--seed-file={MUNGE_DIR / tag}.seed"], "munged.out", user="munge", group="munge")
        _wait(munge_socket.exists, timeout, "munged's socket", cluster, processes)
        start([programs["slurmctld"], "-D", "-c", "-f", str(conf)], "slurmctld.out")
        _wait(lambda: "UP" in cluster.run("scontrol", "ping", timeout=10), timeout, "slurmctld", cluster, processes)
        start([programs["slurmd"], "-D", "-f", str(conf), "-N", node], "slurmd.out")
        _wait(lambda: cluster.run("sinfo", "--noheader", "--Node", "--format=%t", timeout=10).split() == ["idle"],
              timeout, f"node {node} to be idle in sinfo", cluster, processes)
        yield cluster
    finally:
        if len(processes) >= 2 and processes[1].poll() is None:  # slurmctld is up: cancel what is left
            try:
                jobs = cluster.run("squeue", "--noheader", "--format=%i", timeout=10).split()
                if jobs:
                    cluster.run("scancel", *jobs, timeout=10)
                    deadline = time.monotonic() + 30
                    while cluster.run("squeue", "--noheader", "--states=RUNNING,COMPLETING", "--format=%i",
                                      timeout=10).split() and time.monotonic() < deadline:
                        time.sleep(0.5)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                pass
        for process in reversed(processes):  # slurmd, slurmctld, munged
            _stop(process)
        _remove_munge_files(tag)
        if CONF_CACHE.is_symlink() and CONF_CACHE.readlink() == directory:
            CONF_CACHE.unlink()
