#!/usr/bin/env python3
"""Start or stop a real single-node Slurm cluster (munge + slurmctld + slurmd) for trying the Slurm profile.

Everything lives in one folder (config, state, spool, logs, munge socket) and no systemd is needed. One
system path is touched while the cluster runs: /etc/slurm/slurm.conf becomes a link to the folder's config,
because snakemake-executor-plugin-slurm-jobstep drops SLURM_CONF before its nested `srun`, which then reads
Slurm's default path; `stop` removes the link, and `start` refuses when a real slurm.conf is there.
Needs root (the daemons run as root, munged as user `munge`) and Debian's `slurmctld slurmd slurm-client
munge` packages, which `start` installs with apt-get when they are missing.

    python scripts/local_slurm.py start            # prints `export SLURM_CONF=...`; eval it in your shell
    python scripts/local_slurm.py stop

Without slurmdbd there is no accounting: `sacct` fails, so the profile queries job states with squeue
(`slurm-status-command: squeue`); finished jobs stay visible to squeue for MIN_JOB_AGE_S.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

APT_PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
REQUIRED_COMMANDS = ("slurmctld", "slurmd", "sbatch", "srun", "squeue", "scancel", "sinfo", "munged")
APT_LOCK_TIMEOUT_S = 300
DEFAULT_DIR = Path(tempfile.gettempdir()) / "depthcontrast-slurm"
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")  # Slurm's compiled-in default; see the module docstring
MUNGED = Path("/usr/sbin/munged")
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_USER = "munge"
MEMORY_MARGIN_MB = 1024  # kept back from the node's RAM
# The node advertises at least this much (SlurmdParameters=config_overrides), so rules asking for 8 threads
# or 8 GB (preprocess, pretrain) are scheduled on a small machine instead of pending forever; they share it.
MIN_NODE_CPUS = 8
MIN_NODE_MEMORY_MB = 16000
DEF_MEM_PER_CPU_MB = 1000  # without it a job that asks for no memory takes the whole node
MIN_JOB_AGE_S = 300  # how long finished jobs stay in squeue: the profile's status source
KILL_WAIT_S = 30  # SIGTERM -> SIGKILL on cancel or time limit (Slurm's default)
PARTITION = "debug"
CLUSTER_NAME = "depthcontrast"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 20


class LocalSlurmError(RuntimeError):
    """The local cluster cannot be installed, started or reached."""


@dataclass(frozen=True)
class LocalCluster:
    """A running local cluster: point SLURM_CONF at `conf` to use it."""

    root: Path
    conf: Path
    node: str
    cpus: int
    memory_mb: int

    def env(self) -> dict[str, str]:
        """os.environ plus SLURM_CONF, for Slurm commands and Snakemake."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}


def _which(name: str) -> str | None:
    """The program's full path, looking in /usr/sbin too (not on every user's PATH)."""
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"]))


def missing_commands() -> list[str]:
    """Slurm/munge programs that are not installed."""
    return [name for name in REQUIRED_COMMANDS if _which(name) is None]


def install_packages() -> None:
    """apt-get install the Slurm and munge packages (root only); raises LocalSlurmError when apt cannot."""
    if os.geteuid() != 0:
        raise LocalSlurmError("installing Slurm needs root (apt-get)")
    if shutil.which("apt-get") is None:
        raise LocalSlurmError(f"no apt-get here: install {' '.join(APT_PACKAGES)} with your package manager")
    lock = f"DPkg::Lock::Timeout={APT_LOCK_TIMEOUT_S}"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "-o", lock, "update", "-q"],
        ["apt-get", "-o", lock, "install", "-y", "-q", "--no-install-recommends", *APT_PACKAGES],
    ):
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise LocalSlurmError(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def node_memory_mb() -> int:
    """The node's RAM (MemTotal) minus MEMORY_MARGIN_MB, at least MIN_NODE_MEMORY_MB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return max(int(line.split()[1]) // 1024 - MEMORY_MARGIN_MB, MIN_NODE_MEMORY_MB)
    raise LocalSlurmError("no MemTotal in /proc/meminfo")


def slurm_conf(root: Path, node: str, cpus: int, memory_mb: int) -> str:
    """A slurm.conf for one node on 127.0.0.1 with private ports, state and logs under `root`."""
    return "\n".join(
        [
            f"ClusterName={CLUSTER_NAME}",
            f"SlurmctldHost={node}(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "SlurmdParameters=config_overrides",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={root / 'munge' / 'munge.socket'}",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            f"DefMemPerCPU={DEF_MEM_PER_CPU_MB}",
            f"MinJobAge={MIN_JOB_AGE_S}",
            f"KillWait={KILL_WAIT_S}",
            "ReturnToService=2",
            "MailProg=/bin/true",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


def _spawn(root: Path, name: str, command: list[str], **kwargs) -> None:
    """Start a daemon in the foreground of its own session; its pid goes to <root>/<name>.pids (ours to stop)."""
    log = open(root / "log" / f"{name}.out", "ab")  # noqa: SIM115 - the daemon keeps it open
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)
    log.close()
    (root / f"{name}.pids").write_text(f"{process.pid}\n")


def _start_munge(root: Path) -> None:
    """munged as user munge on a private socket under <root>/munge (the system key, no system paths)."""
    if not MUNGE_KEY.exists():
        raise LocalSlurmError(f"{MUNGE_KEY} is missing: reinstall the munge package")
    munge_dir = root / "munge"
    munge_dir.mkdir(mode=0o755)
    shutil.chown(munge_dir, MUNGE_USER, MUNGE_USER)
    command = [
        str(MUNGED), "--foreground", f"--socket={munge_dir / 'munge.socket'}", f"--key-file={MUNGE_KEY}",
        f"--log-file={munge_dir / 'munged.log'}", f"--pid-file={munge_dir / 'munged.pid'}",
        f"--seed-file={munge_dir / 'munged.seed'}",
    ]  # fmt: skip
    _spawn(root, "munged", command, user=MUNGE_USER, group=MUNGE_USER, extra_groups=[])
    _wait_for(lambda: (munge_dir / "munge.socket").exists(), "munged's socket", root)


def _wait_for(ready, what: str, root: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        if time.monotonic() > deadline:
            raise LocalSlurmError(f"{what} not up after {START_TIMEOUT_S} s; logs in {root / 'log'}")
        time.sleep(0.2)


def _node_idle(cluster: LocalCluster) -> bool:
    result = subprocess.run(
        ["sinfo", "--noheader", "--nodes", cluster.node, "--format", "%t"],
        env=cluster.env(), capture_output=True, text=True,
    )  # fmt: skip
    return result.returncode == 0 and result.stdout.strip() == "idle"


def start_cluster(root: Path = DEFAULT_DIR, cpus: int | None = None) -> LocalCluster:
    """Write slurm.conf under `root` (which must not hold a running cluster) and start munged, slurmctld, slurmd.

    Returns once the node is idle and takes jobs. Installs the apt packages first when they are missing.
    """
    if os.geteuid() != 0:
        raise LocalSlurmError("the local Slurm cluster needs root (its daemons run as root)")
    if missing_commands():
        install_packages()
        if still_missing := missing_commands():
            raise LocalSlurmError(f"still missing after apt-get install: {', '.join(still_missing)}")
    root = root.resolve()
    if any(root.glob("*.pids")):
        raise LocalSlurmError(f"{root} already holds a cluster: run `stop` first")
    if SYSTEM_CONF.is_symlink() and not SYSTEM_CONF.exists():
        SYSTEM_CONF.unlink()  # left by a local cluster whose folder is gone
    if SYSTEM_CONF.exists():
        raise LocalSlurmError(f"{SYSTEM_CONF} exists (a real cluster, or another local one): not replacing it")
    shutil.rmtree(root, ignore_errors=True)
    for sub in ("state", "spool", "log"):
        (root / sub).mkdir(parents=True)
    root.chmod(0o755)  # munged (user munge) must reach its socket folder
    node = socket.gethostname().split(".")[0]
    cluster = LocalCluster(
        root, root / "slurm.conf", node, cpus or max(os.cpu_count() or 1, MIN_NODE_CPUS), node_memory_mb()
    )
    cluster.conf.write_text(slurm_conf(root, node, cluster.cpus, cluster.memory_mb))
    try:
        SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SYSTEM_CONF.symlink_to(cluster.conf)
        _start_munge(root)
        env = cluster.env()
        _spawn(root, "slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(cluster.conf)], env=env)
        _spawn(root, "slurmd", [_which("slurmd"), "-D", "-N", node, "-f", str(cluster.conf)], env=env)
        _wait_for(lambda: _node_idle(cluster), f"node {node}", root)
    except BaseException:
        stop_cluster(root)
        raise
    return cluster


def stop_cluster(root: Path = DEFAULT_DIR) -> None:
    """Cancel every job, stop the daemons started in `root` (TERM, then KILL), unlink SYSTEM_CONF, delete `root`."""
    root = root.resolve()
    conf = root / "slurm.conf"
    if conf.exists() and (root / "slurmctld.pids").exists():
        subprocess.run(["scancel", "--full", "--user", "root"], env={**os.environ, "SLURM_CONF": str(conf)},
                       capture_output=True, timeout=STOP_TIMEOUT_S)  # fmt: skip
    pids = [int(path.read_text()) for path in sorted(root.glob("*.pids"))]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    if SYSTEM_CONF.is_symlink() and SYSTEM_CONF.readlink() == conf:
        SYSTEM_CONF.unlink()
    shutil.rmtree(root, ignore_errors=True)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):  # reap our own child so it does not linger as a zombie
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"cluster folder (default: {DEFAULT_DIR})")
    parser.add_argument(
        "--cpus", type=int, help=f"CPUs the node advertises (default: this machine's, at least {MIN_NODE_CPUS})"
    )
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            cluster = start_cluster(args.dir, args.cpus)
            print(f"export SLURM_CONF={cluster.conf}")
            print(f"# node {cluster.node}: {cluster.cpus} CPUs, {cluster.memory_mb} MB; logs in {cluster.root / 'log'}",
                  file=sys.stderr)  # fmt: skip
        else:
            stop_cluster(args.dir)
    except LocalSlurmError as error:
        print(f"local_slurm: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
