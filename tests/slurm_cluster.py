"""A throw-away, single-node Slurm cluster for tests.

``OneNodeSlurm`` starts a private ``munged``, ``slurmctld`` and ``slurmd`` as
child processes of the calling (Python) process, all configured from files in
a fresh temporary directory, so that it never touches ``/etc/slurm``,
``/etc/munge`` or any system-wide daemon, and never collides with another
cluster (system-wide or another instance of this class): the ports are picked
free at start-up, the cluster name is unique and every state, spool, log, pid
and socket path lives in the temporary directory.

Typical use (pytest)::

    reason = OneNodeSlurm.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with OneNodeSlurm(cpus=8) as cluster:
        result = cluster.sbatch_wait("job.sbatch", sbatch_options=["--ntasks=4"])
        assert result.returncode == 0, result.stderr

Requirements: the Slurm daemons run as root (``SlurmUser=root``), which is
the usual situation in CI containers. If the Slurm or MUNGE programs are
missing and we are root on a Debian-like system with ``apt-get``, they are
installed (``slurm-wlm munge``) on first use; otherwise
``OneNodeSlurm.unavailable_reason()`` says why the cluster cannot be used.

Design notes:

* ``SlurmdParameters=config_overrides`` lets the node declare more CPUs than
  the machine has (default 8), so multi-rank jobs fit on small CI runners.
* ``ProctrackType=proctrack/linuxproc`` and ``TaskPlugin=task/none`` avoid any
  dependency on cgroups (which containers usually do not delegate).
* No ``MpiDefault`` is written unless asked for (``mpi_default=``): jobs choose
  their PMI plugin themselves (``srun --mpi=...`` or ``SLURM_MPI_TYPE``).
* ``munged`` insists that every directory above its socket be searchable by
  everyone, so the temporary directory is made mode 0755 (the key file itself
  stays 0600).
* ``stop()`` cancels any job still known to *this* controller, then sends
  SIGTERM (then SIGKILL) to exactly the processes it started, by PID, never by
  name. On Linux the daemons also get ``PR_SET_PDEATHSIG`` so they die with
  the Python process even if it is killed with SIGKILL.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

__all__ = [
    "OneNodeSlurm",
    "SbatchResult",
    "SlurmStartError",
    "SlurmUnavailable",
]

#: Programs the cluster needs; all come from the Debian packages
#: ``slurm-wlm`` (slurmctld, slurmd, slurm-client) and ``munge``.
REQUIRED_PROGRAMS: tuple[str, ...] = (
    "slurmctld",
    "slurmd",
    "sbatch",
    "srun",
    "sinfo",
    "squeue",
    "scancel",
    "munged",
)
#: Debian packages providing ``REQUIRED_PROGRAMS``.
DEBIAN_PACKAGES: tuple[str, ...] = ("slurm-wlm", "munge")

# Daemons usually live in /usr/sbin, which is not on every user's PATH.
_EXTRA_PATH_DIRS: tuple[str, ...] = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
_INSTALL_LOCK = Path(tempfile.gettempdir()) / "onenodeslurm-install.lock"
_JOB_ID_RE = re.compile(r"^\s*(?:Submitted batch job\s+)?(\d+)(?:;\S*)?\s*$", re.MULTILINE)
# Variables inherited from an enclosing Slurm job or MPI launch would confuse
# sbatch/srun talking to our private cluster (SLURM_JOB_ID makes srun try to
# join that job) and the MPI ranks of our jobs (an outer PMI_PORT/PMI_FD or
# PMIX_* makes MPI_Init talk to the outer launcher instead of srun's PMI).
_INHERITED_PREFIXES: tuple[str, ...] = (
    "SLURM_",
    "SBATCH_",
    "SALLOC_",
    "SRUN_",
    "PMI_",
    "PMIX_",
    "HYDRA_",
    "OMPI_COMM_WORLD_",
    "MPI_LOCALNRANKS",
    "MPI_LOCALRANKID",
)


class SlurmUnavailable(RuntimeError):
    """Slurm/MUNGE are not installed and cannot be installed here."""


class SlurmStartError(RuntimeError):
    """The private cluster did not come up (the message includes log tails)."""


class SbatchResult(subprocess.CompletedProcess):  # type: ignore[type-arg]
    """``subprocess.CompletedProcess`` of ``sbatch --wait`` plus the job id.

    ``returncode`` is sbatch's exit status, which with ``--wait`` is the job's
    exit code (non-zero when the batch script failed).
    """

    def __init__(
        self,
        args: Sequence[str],
        returncode: int,
        stdout: str,
        stderr: str,
        job_id: int | None,
    ) -> None:
        super().__init__(list(args), returncode, stdout, stderr)
        self.job_id: int | None = job_id


def _search_path() -> str:
    """``$PATH`` extended with the usual system binary directories."""
    parts = os.environ.get("PATH", "").split(os.pathsep)
    parts += [d for d in _EXTRA_PATH_DIRS if d not in parts]
    return os.pathsep.join(p for p in parts if p)


def _which(program: str) -> str | None:
    return shutil.which(program, path=_search_path())


def _missing_programs() -> list[str]:
    return [p for p in REQUIRED_PROGRAMS if _which(p) is None]


def _free_tcp_ports(count: int) -> list[int]:
    """Return ``count`` distinct TCP ports that are free right now.

    The sockets are held open until all ports are chosen so the same port is
    not returned twice; the usual (tiny) race with other processes remains.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _die_with_parent() -> None:
    """``preexec_fn``: ask the kernel to SIGTERM the child if we die."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _apt_candidates_known(packages: Sequence[str], env: Mapping[str, str]) -> bool:
    """True when apt's package lists already know an install candidate for all."""
    proc = subprocess.run(
        ["apt-cache", "policy", *packages],
        env=dict(env),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return False
    candidates = re.findall(r"Candidate:\s*(\S+)", proc.stdout)
    return len(candidates) == len(packages) and "(none)" not in candidates


def _install_debian_packages(packages: Sequence[str], timeout: float) -> None:
    """``apt-get install`` the packages non-interactively.

    ``apt-get update`` runs only when the package lists do not know the
    packages, or when a first install attempt fails (stale lists). Raises
    ``SlurmUnavailable`` with apt's output tail on failure.
    """
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", PATH=_search_path())
    apt = [
        "apt-get",
        "-y",
        "-q",
        "-o",
        "DPkg::Lock::Timeout=300",
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
    ]
    install = [*apt, "install", "--no-install-recommends", *packages]
    update = [*apt, "update"]

    def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cmd,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    if not _apt_candidates_known(packages, env):
        run(update)
    proc = run(install)
    if proc.returncode != 0:
        run(update)
        proc = run(install)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise SlurmUnavailable(
            f"'apt-get install {' '.join(packages)}' failed (rc={proc.returncode}):\n{tail}"
        )


class OneNodeSlurm:
    """A private one-node Slurm cluster (munged + slurmctld + slurmd).

    Use as a context manager, or call ``start()`` / ``stop()`` explicitly.
    ``stop()`` is idempotent and is also registered with ``atexit``.

    Args:
        cpus: CPUs declared for the node (may exceed the real core count).
        real_memory_mb: ``RealMemory`` of the node, in MiB (memory is not a
            consumable resource here, so this is informational).
        partition: name of the (default) partition.
        node_name: Slurm node name; defaults to this host's short hostname,
            which is also what ``SlurmctldHost`` must be.
        mpi_default: value for ``MpiDefault`` (e.g. ``"pmi2"``); ``None``
            leaves Slurm's built-in default (``none``), so jobs pick their
            plugin with ``srun --mpi=`` or ``SLURM_MPI_TYPE``.
        min_job_age: ``MinJobAge`` seconds. Small values make ``sbatch --wait``
            poll every 2 s instead of backing off to 8/32 s.
        startup_timeout: seconds to wait for the node to become idle.
        extra_conf: extra ``slurm.conf`` lines appended verbatim.
        base_dir: parent directory for the temporary directory (default:
            the system temporary directory). Its path must be searchable by
            all users (munged's socket check).
        keep_dir: keep the temporary directory after ``stop()`` (debugging).
    """

    _unavailable: str | None = None
    _checked: bool = False

    def __init__(
        self,
        *,
        cpus: int = 8,
        real_memory_mb: int = 1024,
        partition: str = "debug",
        node_name: str | None = None,
        mpi_default: str | None = None,
        min_job_age: int = 5,
        startup_timeout: float = 60.0,
        extra_conf: Sequence[str] = (),
        base_dir: str | os.PathLike[str] | None = None,
        keep_dir: bool = False,
    ) -> None:
        if cpus < 1:
            raise ValueError("cpus must be >= 1")
        self.cpus = cpus
        self.real_memory_mb = real_memory_mb
        self.partition = partition
        self.hostname = socket.gethostname().split(".")[0]
        self.node_name = node_name or self.hostname
        self.mpi_default = mpi_default
        self.min_job_age = min_job_age
        self.startup_timeout = startup_timeout
        self.extra_conf = list(extra_conf)
        self.base_dir = base_dir
        self.keep_dir = keep_dir
        self.cluster_name = "t" + uuid.uuid4().hex[:10]

        self.root: Path | None = None
        self.conf_path: Path | None = None
        self.munge_socket: Path | None = None
        self.ctld_port: int | None = None
        self.slurmd_port: int | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, IO[bytes]] = {}
        self._started = False
        self._stopped = False

    # ------------------------------------------------------------------
    # availability
    # ------------------------------------------------------------------
    @classmethod
    def unavailable_reason(cls, *, install: bool = True, timeout: float = 900.0) -> str | None:
        """Why the cluster cannot be used here, or ``None`` if it can.

        Missing programs are installed with ``apt-get`` when ``install`` is
        true and we are root on Debian/Ubuntu with ``apt-get`` (``apt-get
        update`` only when the package lists do not know the packages). The
        answer is cached for the process. Never raises.
        """
        if cls._checked:
            return cls._unavailable
        reason = cls._compute_unavailable(install=install, timeout=timeout)
        if reason is None or install:  # a "not installed" answer may change with install=True
            cls._unavailable, cls._checked = reason, True
        return reason

    @classmethod
    def _compute_unavailable(cls, *, install: bool, timeout: float) -> str | None:
        if not sys.platform.startswith("linux"):
            return f"a private Slurm cluster needs Linux (this is {sys.platform})"
        if os.geteuid() != 0:
            return "a private Slurm cluster needs root (slurmd runs jobs as SlurmUser=root)"
        missing = _missing_programs()
        if not missing:
            return None
        why = f"Slurm/MUNGE programs not found: {', '.join(missing)}"
        if not install:
            return why
        if not Path("/etc/debian_version").exists() or _which("apt-get") is None:
            return f"{why}; cannot install them (not a Debian-like system with apt-get)"
        try:
            _INSTALL_LOCK.touch(exist_ok=True)
            with open(_INSTALL_LOCK, "a") as lock:  # serialise parallel test workers
                fcntl.flock(lock, fcntl.LOCK_EX)
                if _missing_programs():
                    _install_debian_packages(DEBIAN_PACKAGES, timeout)
        except (OSError, subprocess.SubprocessError, SlurmUnavailable) as exc:
            return f"{why}; installing {' '.join(DEBIAN_PACKAGES)} failed: {exc}"
        missing = _missing_programs()
        if missing:
            return (
                f"still missing after installing {' '.join(DEBIAN_PACKAGES)}: {', '.join(missing)}"
            )
        return None

    # ------------------------------------------------------------------
    # lifecycle
    # ------------------------------------------------------------------
    def __enter__(self) -> OneNodeSlurm:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> OneNodeSlurm:
        """Write the configuration, start the daemons, wait for an idle node.

        Raises ``SlurmUnavailable`` if Slurm cannot be used here and
        ``SlurmStartError`` (with log tails) if it did not come up in time;
        in both cases nothing is left running.
        """
        if self._started:
            raise RuntimeError("OneNodeSlurm.start() called twice")
        reason = self.unavailable_reason()
        if reason is not None:
            raise SlurmUnavailable(reason)
        self._started = True
        atexit.register(self.stop)
        try:
            self._prepare_dir()
            self._start_munged()
            self._start_daemon(
                "slurmctld", [self._prog("slurmctld"), "-D", "-f", str(self.conf_path)]
            )
            self._start_daemon(
                "slurmd",
                [self._prog("slurmd"), "-D", "-f", str(self.conf_path), "-N", self.node_name],
            )
            self._wait_for_idle()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Cancel remaining jobs, stop the daemons we started, remove the dir.

        Only the PIDs of our own child processes are signalled (SIGTERM, then
        SIGKILL after a grace period). Safe to call more than once.
        """
        if self._stopped or not self._started:
            return
        self._stopped = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if self._alive("slurmctld"):
            with contextlib.suppress(Exception):
                self.cancel_all_jobs(wait=15.0)
        for name in ("slurmd", "slurmctld", "munged"):
            self._terminate(name)
        for fh in self._logs.values():
            with contextlib.suppress(OSError):
                fh.close()
        self._logs.clear()
        if self.root is not None and not self.keep_dir:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def running(self) -> bool:
        """True while all three daemons are alive."""
        return (
            self._started
            and not self._stopped
            and all(self._alive(n) for n in ("munged", "slurmctld", "slurmd"))
        )

    @property
    def pids(self) -> dict[str, int]:
        """PIDs of the daemons this instance started (name -> pid)."""
        return {name: proc.pid for name, proc in self._procs.items()}

    # ------------------------------------------------------------------
    # client side
    # ------------------------------------------------------------------
    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for Slurm client commands (sbatch, srun, sinfo, ...).

        It is this process's environment without variables of an enclosing
        Slurm job or MPI launch (``SLURM_*``, ``SBATCH_*``, ``PMI_*``,
        ``PMIX_*``, ``HYDRA_*``, ...; see ``_INHERITED_PREFIXES``), with ``extra``
        applied on top, ``SLURM_CONF`` pointing at the private configuration
        and the system binary directories appended to ``PATH``.
        """
        if self.conf_path is None:
            raise RuntimeError("cluster not started")
        env = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_PREFIXES)}
        env["PATH"] = _search_path()
        if extra:
            env.update(extra)
            if "PATH" in extra:  # a caller's PATH still needs the Slurm client programs
                parts = env["PATH"].split(os.pathsep)
                env["PATH"] = os.pathsep.join(
                    parts + [d for d in _EXTRA_PATH_DIRS if d not in parts]
                )
        env["SLURM_CONF"] = str(self.conf_path)
        return env

    def run(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float | None = 60.0,
        check: bool = False,
        cwd: str | os.PathLike[str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command (e.g. ``["sinfo"]``) against this cluster."""
        return subprocess.run(
            list(args),
            env=self.env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
        )

    def sbatch_wait(
        self,
        script: str | os.PathLike[str],
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        timeout: float | None = 300.0,
        *,
        sbatch_options: Sequence[str] = (),
        cwd: str | os.PathLike[str] | None = None,
    ) -> SbatchResult:
        """Submit ``script`` with ``sbatch --wait`` and return when it ends.

        Args:
            script: batch script path.
            args: arguments passed to the batch script.
            env: variables layered over this process's environment (see
                ``env()``); with sbatch's default ``--export=ALL`` they reach
                the job.
            timeout: seconds before giving up; on timeout every job of this
                cluster is cancelled and ``subprocess.TimeoutExpired`` raised.
            sbatch_options: extra sbatch options placed before the script
                (e.g. ``["--ntasks=4", "--chdir=/tmp/x"]``).
            cwd: working directory of the sbatch process (also the job's
                default working directory).

        Returns:
            ``SbatchResult`` whose ``returncode`` is the job's exit code and
            ``job_id`` the parsed job id (``None`` if submission failed).
        """
        cmd = [self._prog("sbatch"), "--wait", *sbatch_options, os.fspath(script), *args]
        try:
            proc = self.run(cmd, env=env, timeout=timeout, cwd=cwd)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(Exception):
                self.cancel_all_jobs(wait=10.0)
            raise
        match = _JOB_ID_RE.search(proc.stdout)
        job_id = int(match.group(1)) if match else None
        return SbatchResult(cmd, proc.returncode, proc.stdout, proc.stderr, job_id)

    def job_ids(self) -> list[int]:
        """Ids of the jobs the controller still knows about (any state)."""
        proc = self.run([self._prog("squeue"), "-h", "-t", "all", "-o", "%i"], timeout=30)
        return [int(x) for x in proc.stdout.split() if x.isdigit()]

    def cancel_all_jobs(self, wait: float = 15.0) -> None:
        """``scancel`` every job of this cluster and wait until none runs."""
        active = ["-t", "PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING"]
        proc = self.run([self._prog("squeue"), "-h", *active, "-o", "%i"], timeout=30)
        ids = [x for x in proc.stdout.split() if x.isdigit()]
        if not ids:
            return
        self.run([self._prog("scancel"), "--full", *ids], timeout=30)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc = self.run([self._prog("squeue"), "-h", *active, "-o", "%i"], timeout=30)
            if not proc.stdout.strip():
                return
            time.sleep(0.5)

    def log_tails(self, lines: int = 30) -> str:
        """The last ``lines`` lines of every daemon log, for error messages."""
        if self.root is None:
            return "<no logs: cluster never started>"
        out = []
        for name in ("munged", "slurmctld", "slurmd"):
            for path in (self.root / "log" / f"{name}.log", self.root / "log" / f"{name}.out"):
                if path.exists():
                    out.append(f"--- {path} ---\n{_tail(path, lines)}")
        return "\n".join(out) or "<no log files>"

    # ------------------------------------------------------------------
    # internals
    # ------------------------------------------------------------------
    @staticmethod
    def _prog(name: str) -> str:
        path = _which(name)
        if path is None:
            raise SlurmUnavailable(f"{name} not found")
        return path

    def _alive(self, name: str) -> bool:
        proc = self._procs.get(name)
        return proc is not None and proc.poll() is None

    def _terminate(self, name: str, grace: float = 10.0) -> None:
        proc = self._procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        # Popen.send_signal only signals a child that has not been reaped, so
        # the PID cannot have been recycled for an unrelated process.
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    def _prepare_dir(self) -> None:
        root = Path(tempfile.mkdtemp(prefix="onenodeslurm-", dir=self.base_dir))
        self.root = root
        # munged refuses a socket whose directories are not searchable by all.
        root.chmod(0o755)
        for sub in ("state", "spool", "spool/slurmd", "log", "run", "munge"):
            (root / sub).mkdir(mode=0o755)
        os.chmod(root / "state", 0o700)

        key = root / "munge" / "munge.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, os.urandom(1024))
        finally:
            os.close(fd)
        self.munge_socket = root / "munge" / "munge.socket"

        self.ctld_port, self.slurmd_port = _free_tcp_ports(2)
        plugstack = root / "plugstack.conf"  # empty: ignore site SPANK plugins
        plugstack.write_text("")
        self.conf_path = root / "slurm.conf"
        self.conf_path.write_text(self._render_conf(root, plugstack))

    def _render_conf(self, root: Path, plugstack: Path) -> str:
        lines = [
            "# Generated by OneNodeSlurm (tests/slurm_cluster.py); throw-away.",
            f"ClusterName={self.cluster_name}",
            f"SlurmctldHost={self.hostname}(127.0.0.1)",
            f"SlurmctldPort={self.ctld_port}",
            f"SlurmdPort={self.slurmd_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool' / 'slurmd'}",
            f"SlurmctldPidFile={root / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'run' / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            f"PlugStackConfig={plugstack}",
            "SlurmdParameters=config_overrides",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "ReturnToService=2",
            f"MinJobAge={self.min_job_age}",
            "KillWait=5",
            "InactiveLimit=0",
            "MailProg=/bin/true",
        ]
        if self.mpi_default:
            lines.append(f"MpiDefault={self.mpi_default}")
        lines += self.extra_conf
        lines += [
            f"NodeName={self.node_name} NodeHostname={self.hostname} NodeAddr=127.0.0.1 "
            f"CPUs={self.cpus} RealMemory={self.real_memory_mb} State=UNKNOWN",
            f"PartitionName={self.partition} Nodes={self.node_name} Default=YES "
            "MaxTime=INFINITE State=UP",
        ]
        return "\n".join(lines) + "\n"

    def _popen(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        assert self.root is not None
        log = open(self.root / "log" / f"{name}.out", "ab")  # noqa: SIM115 - closed in stop()
        self._logs[name] = log
        env = self.env() if self.conf_path is not None else dict(os.environ)
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.root,
            start_new_session=True,  # no terminal signals; we stop them ourselves
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - async-signal-safe enough (ctypes prctl)
        )
        self._procs[name] = proc
        return proc

    def _start_munged(self) -> None:
        assert self.root is not None and self.munge_socket is not None
        mdir = self.root / "munge"
        cmd = [
            self._prog("munged"),
            "--foreground",
            f"--socket={self.munge_socket}",
            f"--key-file={mdir / 'munge.key'}",
            f"--pid-file={mdir / 'munged.pid'}",
            f"--seed-file={mdir / 'munged.seed'}",
            f"--log-file={self.root / 'log' / 'munged.log'}",
        ]
        self._popen("munged", cmd)
        self._wait(
            "munged socket",
            lambda: self.munge_socket is not None and self.munge_socket.exists(),
            timeout=20.0,
            watch=("munged",),
        )

    def _start_daemon(self, name: str, cmd: list[str]) -> None:
        self._popen(name, cmd)

    def _node_state(self) -> str:
        proc = self.run(
            [self._prog("sinfo"), "-h", "-N", "-n", self.node_name, "-o", "%T"], timeout=15
        )
        return proc.stdout.strip().lower() if proc.returncode == 0 else ""

    def _wait_for_idle(self) -> None:
        self._wait(
            f"node {self.node_name} to become idle",
            lambda: self._node_state() == "idle",
            timeout=self.startup_timeout,
            watch=("munged", "slurmctld", "slurmd"),
        )

    def _wait(
        self,
        what: str,
        ready: Callable[[], bool],
        *,
        timeout: float,
        watch: Sequence[str],
        interval: float = 0.2,
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for name in watch:
                if not self._alive(name):
                    rc = self._procs[name].returncode if name in self._procs else None
                    raise SlurmStartError(
                        f"{name} exited (rc={rc}) while waiting for {what}\n{self.log_tails()}"
                    )
            with contextlib.suppress(subprocess.TimeoutExpired):
                if ready():
                    return
            if time.monotonic() >= deadline:
                raise SlurmStartError(
                    f"timed out after {timeout:.0f}s waiting for {what}\n{self.log_tails()}"
                )
            time.sleep(interval)

    def __repr__(self) -> str:
        state = "running" if self.running else ("stopped" if self._stopped else "new")
        return (
            f"OneNodeSlurm(cluster={self.cluster_name!r}, node={self.node_name!r}, "
            f"cpus={self.cpus}, root={str(self.root)!r}, {state})"
        )


@contextlib.contextmanager
def one_node_slurm(**kwargs: object) -> Iterator[OneNodeSlurm]:
    """Functional form: ``with one_node_slurm(cpus=4) as cluster: ...``."""
    cluster = OneNodeSlurm(**kwargs)  # type: ignore[arg-type]
    with cluster:
        yield cluster
