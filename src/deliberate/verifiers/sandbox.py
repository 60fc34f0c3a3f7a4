"""Run untrusted, model-written Python in a separate, isolated, limited process.

Nothing a candidate program does runs in the engine's process. Each execution is a
fresh process started with :func:`asyncio.create_subprocess_exec` (the event loop
never blocks on it) through the launcher :mod:`deliberate.verifiers._jail`, which
isolates itself and then execs the interpreter on the program. What is enforced,
and where, depends on the machine and is probed once (``Sandbox.isolation()``):

- as root: new mount, network, PID, IPC and UTS namespaces; a read-only, nosuid
  view of the whole filesystem except a size-capped tmpfs scratch directory; a
  private ``/proc``; a distinct unprivileged uid per concurrency slot;
- not root: the same namespaces inside a new user namespace where the kernel allows
  it (the uid stays the caller's);
- everywhere: CPU, memory, process, file-size and open-file limits, no core dumps,
  an empty environment, a wall-clock timeout that kills the whole process group,
  stdout and stderr capped while they are read, the scratch directory removed.

``docs/sandbox.md`` has the full table.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import marshal
import math
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from deliberate.errors import SandboxError
from deliberate.verifiers import _jail  # noqa: F401  (compiles and caches its bytecode)

__all__ = ["ExecResult", "ExecStatus", "Sandbox", "SandboxError", "SandboxLimits"]

ExecStatus = Literal["ok", "error", "timeout", "killed", "oom", "output_limit"]

JAIL = Path(__file__).with_name("_jail.py")
# The launcher is imported (not run as a script) so that its compiled bytecode is
# reused; its directory goes last on the path, behind the standard library.
_BOOT = ("import sys; sys.path.append(sys.argv[1]); import _jail; "
         "sys.exit(_jail.main(sys.argv[2]))")
_SETUP_FAILED = 121
_PROGRAM = "program.py"
_MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """Limits of one execution, and how many executions may run at once.

    ``cpu_s`` None means the wall-clock timeout rounded up plus one second;
    ``max_output_bytes`` applies to stdout and stderr separately.
    """

    timeout_s: float = 10.0
    cpu_s: int | None = None
    memory_bytes: int = 512 * _MiB
    max_processes: int = 32
    max_file_bytes: int = 16 * _MiB
    max_open_files: int = 64
    max_output_bytes: int = 1 * _MiB
    scratch_bytes: int = 64 * _MiB
    max_concurrency: int = field(default_factory=lambda: os.cpu_count() or 1)
    base_uid: int = 61000
    uid_count: int = 1000
    python: str | None = None
    site_packages: bool = False
    scratch_root: str | None = None

    def __post_init__(self) -> None:
        positive = ("timeout_s", "memory_bytes", "max_processes", "max_file_bytes",
                    "max_open_files", "max_output_bytes", "scratch_bytes", "max_concurrency",
                    "uid_count")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"SandboxLimits.{name} must be positive")
        if self.cpu_s is not None and self.cpu_s <= 0:
            raise ValueError("SandboxLimits.cpu_s must be positive")

    def rlimits(self, timeout_s: float) -> dict[str, int]:
        cpu = self.cpu_s if self.cpu_s is not None else math.ceil(timeout_s) + 1
        return {"cpu": cpu, "as": self.memory_bytes, "nproc": self.max_processes,
                "fsize": self.max_file_bytes, "nofile": self.max_open_files, "core": 0}


@dataclass(frozen=True, slots=True)
class ExecResult:
    """How one execution ended, with its (capped) output."""

    status: ExecStatus
    exit_code: int | None
    signal: int | None
    stdout: str
    stderr: str
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def describe(self) -> str:
        """How the process ended, as a phrase that follows "the program"."""
        if self.status == "ok":
            return "exited normally"
        if self.status == "timeout":
            return f"was killed: time limit exceeded after {self.duration_s:.1f} s"
        if self.status == "output_limit":
            return "was killed: output limit exceeded"
        if self.status == "oom":
            return "ran out of memory (MemoryError)"
        if self.signal is not None:
            name = signal.Signals(self.signal).name if self.signal in _SIGNALS else self.signal
            return f"was killed by signal {name}"
        return f"exited with code {self.exit_code}"


_SIGNALS = {s.value for s in signal.Signals}


# --------------------------------------------------------------------------- probing


def _is_root() -> bool:
    return os.geteuid() == 0


def _reachable_by_others(path: str, *, list_it: bool = True) -> tuple[bool, str | None]:
    """Whether a uid with no special rights can enter (and list) ``path``; else the
    top-most ancestor (or ``path`` itself) that stops it."""
    p = Path(path).resolve()
    parts = [*reversed(p.parents), p]
    for i, part in enumerate(parts):
        try:
            mode = part.stat().st_mode
        except OSError:
            return False, str(part)
        need = stat.S_IXOTH | (stat.S_IROTH if list_it and i == len(parts) - 1 else 0)
        if mode & need != need:
            return False, str(part)
    return True, None


def _interpreter_dirs(python: str) -> dict[str, list[str]]:
    """Directories the interpreter needs that an unprivileged uid cannot reach,
    grouped by the directory that hides them (see ``_jail._expose``)."""
    wanted = {os.path.dirname(os.path.realpath(python)), os.path.dirname(python)}
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        wanted |= {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    cover: dict[str, list[str]] = {}
    for d in sorted(os.path.realpath(w) for w in wanted):
        ok, blocker = _reachable_by_others(d)
        if ok or blocker is None:
            continue
        if blocker == d:
            # the directory itself is closed: exposing it would not help
            continue
        cover.setdefault(blocker, []).append(d)
    # drop directories nested inside another exposed one
    return {c: [d for d in ds if not any(d != o and d.startswith(o + "/") for o in ds)]
            for c, ds in cover.items()}


@dataclass(frozen=True, slots=True)
class _Level:
    name: str
    namespaces: tuple[str, ...]
    uid_drop: bool


def _levels(root: bool) -> list[_Level]:
    full = ("mount", "net", "pid", "ipc", "uts")
    if root:
        # As root the program never runs as root: without a uid to drop to, refuse.
        return [_Level("namespaces", full, True), _Level("netns", ("net",), True),
                _Level("rlimits", (), True)]
    return [_Level("userns", (*full, "user"), False), _Level("userns-net", ("net", "user"), False),
            _Level("rlimits", (), False)]


_PROBE_PROGRAM = r"""
import json, os, socket
print(json.dumps({"uid": os.getuid(), "ifaces": [n for _, n in socket.if_nameindex()],
                  "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())[:5],
                  "env": sorted(os.environ)}))
"""


def _check_scratch_root(root: str, drop: bool) -> None:
    if drop and not _reachable_by_others(root, list_it=False)[0]:
        raise SandboxError(f"scratch root {root} must be enterable by other users (o+x) so "
                           "that the sandbox uid can reach its scratch directory")


@functools.cache
def _probe(python: str, scratch_root: str, base_uid: int, uid_count: int) -> dict[str, Any]:
    """What isolation works on this machine, tried from strongest to weakest.

    Cached per process: it is a fact about the machine and the interpreter.
    """
    root = _is_root()
    _check_scratch_root(scratch_root, root)
    tried: list[str] = []
    for level in _levels(root):
        limits = SandboxLimits(python=python, scratch_root=scratch_root, base_uid=base_uid,
                               uid_count=uid_count, timeout_s=15.0)
        try:
            with _uid_claim(limits, 0, level.uid_drop) as uid:
                status, lines, out = _launch_blocking(limits, level, uid, _PROBE_PROGRAM)
        except (OSError, SandboxError, subprocess.SubprocessError) as exc:
            tried.append(f"{level.name}: {exc}")
            continue
        if status != "exit 0" or "ready" not in lines:
            tried.append(f"{level.name}: {lines.get('error') or status}")
            continue
        try:
            seen = json.loads(out)
        except ValueError:
            tried.append(f"{level.name}: probe printed {out[:80]!r}")
            continue
        applied = [a for a in lines["ready"].split(",") if a]
        netns = "net" in level.namespaces and seen.get("ifaces") == ["lo"]
        return {
            "level": level.name,
            "root": root,
            "uid_drop": "uid_dropped" in applied,
            "uids": f"{base_uid}..{base_uid + uid_count - 1}" if "uid_dropped" in applied
            else None,
            "network": "netns" if netns else "host",
            "pid_namespace": "private_proc" in applied,
            "filesystem": "readonly+scratch_tmpfs" if "readonly_root" in applied else "host",
            "interpreter_exposed": "interpreter_exposed" in applied,
            "namespaces": list(level.namespaces),
            "rlimits": ["cpu", "as", "nproc", "fsize", "nofile", "core"],
            "nproc_effective": "uid_dropped" in applied,
            "env": sorted(seen.get("env", [])),
            "python": python,
            "launcher": str(JAIL),
            "fallbacks_tried": tried,
        }
    raise SandboxError("no sandbox configuration works on this machine: " + "; ".join(tried))


# --------------------------------------------------------------------------- one launch


def _env(work: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": work,
            "TMPDIR": work}


def _lock_dir() -> Path:
    """One place per machine (not per scratch root) where sandbox uids are claimed."""
    base = Path("/run") if os.access("/run", os.W_OK) else Path(tempfile.gettempdir())
    path = base / "deliberate-sandbox-uids"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


@contextlib.contextmanager
def _uid_claim(limits: SandboxLimits, slot: int, drop: bool) -> Any:
    """An unprivileged uid no other execution on this machine holds, while in use.

    Slot ``k`` starts at ``base_uid + k``; a uid is held with an exclusive ``flock``
    on a file in a root-only directory, so sandboxes in other objects or processes
    never share one (their process limits and kill rights stay separate).
    """
    if not drop:
        yield None
        return
    locks = _lock_dir()
    for i in range(limits.uid_count):
        uid = limits.base_uid + (slot + i) % limits.uid_count
        fd = os.open(locks / str(uid), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            yield uid
        finally:
            os.close(fd)
        return
    raise SandboxError(f"all {limits.uid_count} sandbox uids are in use")


@dataclass(slots=True)
class _Prepared:
    base: str
    work: str
    config: dict[str, Any]
    config_path: str


def _prepare(limits: SandboxLimits, level: _Level, uid: int | None, source: str,
             timeout_s: float, status_fd: int) -> _Prepared:
    """Scratch directories and the launcher's config (blocking file work: run in a thread)."""
    root = limits.scratch_root or tempfile.gettempdir()
    _check_scratch_root(root, uid is not None)
    base = tempfile.mkdtemp(prefix="deliberate-sandbox-", dir=root)
    os.chmod(base, 0o711)
    work = os.path.join(base, "work")
    os.mkdir(work, 0o700)
    os.mkdir(os.path.join(base, "stage"), 0o700)
    python = limits.python or sys.executable
    mount = "mount" in level.namespaces
    Path(base, _PROGRAM).write_text(source, encoding="utf-8")
    if not mount:
        Path(work, _PROGRAM).write_text(source, encoding="utf-8")
    if uid is not None:
        os.chown(work, uid, uid)
        if not mount:
            os.chown(os.path.join(work, _PROGRAM), uid, uid)
    config = {
        "python": python,
        "program": _PROGRAM,
        "base": base,
        "work": work,
        "stage": os.path.join(base, "stage"),
        "uid": uid,
        "gid": uid,
        "namespaces": {ns: True for ns in level.namespaces},
        "scratch_bytes": limits.scratch_bytes if mount else 0,
        "expose": _interpreter_dirs(python) if (mount and uid is not None) else {},
        "rlimits": limits.rlimits(timeout_s),
        "env": _env(work),
        "site": limits.site_packages,
        "status_fd": status_fd,
    }
    config_path = os.path.join(base, "config.bin")
    fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        marshal.dump(config, f)
    return _Prepared(base, work, config, config_path)


def _uid_processes(uid: int) -> list[int]:
    """Live processes of ``uid`` (zombies hold nothing but a process-table slot and
    cannot be killed, only reaped by their parent: they are left out)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if os.stat(f"/proc/{entry}").st_uid != uid:
                    continue
                with open(f"/proc/{entry}/stat", "rb") as f:
                    state = f.read().rpartition(b")")[2].split()[0]
                if state not in (b"Z", b"X"):
                    pids.append(int(entry))
    return pids


def _reap(uid: int, patience_s: float = 5.0) -> None:
    """After a kill: make sure nothing runs under the execution's uid before the uid is
    handed to the next execution (the program dies of its parent-death signal a moment
    after the launcher; anything slower is killed here)."""
    deadline = time.monotonic() + patience_s
    while pids := _uid_processes(uid):
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise SandboxError(f"processes of sandbox uid {uid} survive SIGKILL: {pids[:5]}")
        time.sleep(0.01)


def _launcher_argv(prep: _Prepared) -> list[str]:
    return [prep.config["python"], "-I", "-S", "-B", "-c", _BOOT, str(JAIL.parent),
            prep.config_path]


def _remove(base: str) -> None:
    def retry(func: Any, path: str, exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(path, 0o700)
            func(path)

    if sys.version_info >= (3, 12):
        shutil.rmtree(base, onexc=retry)
    else:
        shutil.rmtree(base, onerror=retry)


def _parse_status(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key in ("ready", "error", "exit", "signal"):
            out[key] = value
    return out


def _launch_blocking(limits: SandboxLimits, level: _Level, uid: int | None,
                     source: str) -> tuple[str, dict[str, str], str]:
    """Run ``source`` once, synchronously (the probe only)."""
    r, w = os.pipe()
    prep = None
    try:
        prep = _prepare(limits, level, uid, source, limits.timeout_s, w)
        proc = subprocess.run(
            _launcher_argv(prep),
            pass_fds=(w,), capture_output=True, cwd=prep.base, env=_env(prep.work),
            start_new_session=True, timeout=limits.timeout_s, check=False,
        )
        os.close(w)
        w = -1
        with os.fdopen(r, "rb") as f:
            r = -1
            lines = _parse_status(f.read().decode(errors="replace"))
        final = next((f"{k} {lines[k]}" for k in ("exit", "signal") if k in lines),
                     f"launcher exit {proc.returncode}")
        if "error" in lines:
            raise SandboxError(lines["error"])
        return final, lines, proc.stdout.decode(errors="replace")
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)
        if prep is not None:
            _remove(prep.base)


# --------------------------------------------------------------------------- the sandbox


class Sandbox:
    """Runs Python programs in isolated processes, at most ``max_concurrency`` at once.

    The object holds no run state beyond its limits and a per-event-loop semaphore,
    so one sandbox can serve many strategies and tasks concurrently.
    """

    def __init__(self, limits: SandboxLimits | None = None) -> None:
        self.limits = limits or SandboxLimits()
        self._level_found: _Level | None = None  # the probed isolation level, once known
        self._slots: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[asyncio.Semaphore, list[int]]
        ] = weakref.WeakKeyDictionary()

    # -- what is enforced

    def _probe_key(self) -> tuple[str, str, int, int]:
        lim = self.limits
        return (lim.python or sys.executable, lim.scratch_root or tempfile.gettempdir(),
                lim.base_uid, lim.uid_count)

    def isolation(self) -> dict[str, Any]:
        """What this machine enforces (probed once per process; blocks ~0.1 s the first
        time: inside an event loop, ``await probe()`` first)."""
        return dict(_probe(*self._probe_key()))

    async def probe(self) -> dict[str, Any]:
        """:meth:`isolation` without blocking the event loop."""
        return dict(await asyncio.to_thread(_probe, *self._probe_key()))

    def _level(self, iso: Mapping[str, Any]) -> _Level:
        for level in _levels(bool(iso["root"])):
            if level.name == iso["level"] and level.uid_drop == iso["uid_drop"]:
                return level
        raise SandboxError(f"unknown sandbox level {iso['level']!r}")

    # -- concurrency

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[int]:
        loop = asyncio.get_running_loop()
        if loop not in self._slots:
            n = self.limits.max_concurrency
            self._slots[loop] = (asyncio.Semaphore(n), list(range(n)))
        sem, free = self._slots[loop]
        async with sem:
            slot = min(free)
            free.remove(slot)
            try:
                yield slot
            finally:
                free.append(slot)

    # -- running

    async def run_python(self, source: str, *, stdin: str | bytes = "",
                         timeout_s: float | None = None) -> ExecResult:
        """Run ``source`` as a Python program; never raises for anything the program does.

        Raises :class:`SandboxError` only when the sandbox itself cannot start it.
        """
        timeout = timeout_s if timeout_s is not None else self.limits.timeout_s
        if self._level_found is None:
            self._level_found = self._level(await self.probe())
        level = self._level_found
        async with self._slot() as slot:
            with _uid_claim(self.limits, slot, level.uid_drop) as uid:
                r, w = os.pipe()
                try:
                    prep = await asyncio.to_thread(_prepare, self.limits, level, uid, source,
                                                   timeout, w)
                except BaseException:
                    os.close(r)
                    os.close(w)
                    raise
                result: ExecResult | None = None
                try:
                    result = await self._execute(prep, stdin, timeout, r, w)
                    return result
                finally:
                    if uid is not None and (result is None or result.status != "ok"):
                        await asyncio.shield(asyncio.to_thread(_reap, uid))
                    await asyncio.shield(asyncio.to_thread(_remove, prep.base))

    async def _execute(self, prep: _Prepared, stdin: str | bytes, limit_s: float, r: int,
                       w: int) -> ExecResult:
        loop = asyncio.get_running_loop()
        cap = self.limits.max_output_bytes
        start = time.monotonic()
        status_reader = asyncio.StreamReader()
        try:
            proc = await asyncio.create_subprocess_exec(
                *_launcher_argv(prep),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, cwd=prep.base, env=_env(prep.work),
                start_new_session=True, pass_fds=(w,),
            )
        finally:
            os.close(w)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(status_reader), os.fdopen(r, "rb", 0))
        status_lines: list[str] = []
        init: list[int] = []  # a pidfd of the PID namespace's init, once reported
        killed_for: list[str] = []
        backstop: list[asyncio.TimerHandle] = []

        def kill_group() -> None:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)

        def kill(reason: str) -> None:
            """Kill the program's PID namespace through its init (the launcher then reaps
            it and exits), with the launcher's whole process group as the backstop."""
            if not killed_for:
                killed_for.append(reason)
            ended = any(line.startswith("init ") for line in status_lines)
            if init and not ended:
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(init[0], signal.SIGKILL)
                if not backstop:
                    backstop.append(loop.call_later(1.0, kill_group))
            else:
                kill_group()

        async def read_status() -> None:
            while line := await status_reader.readline():
                text = line.decode(errors="replace").rstrip("\n")
                status_lines.append(text)
                if text.startswith("pid ") and not init:
                    with contextlib.suppress(OSError, ValueError, AttributeError):
                        init.append(os.pidfd_open(int(text[4:])))
                    if killed_for:
                        kill(killed_for[0])

        out, err = bytearray(), bytearray()
        truncated = {"out": False, "err": False}

        async def pump(stream: asyncio.StreamReader | None, buf: bytearray, key: str) -> None:
            # Past the cap the rest is read and dropped until the pipe closes: asyncio
            # only reports the process ended once all its pipes are drained.
            assert stream is not None
            while chunk := await stream.read(65536):
                room = cap - len(buf)
                if truncated[key]:
                    continue
                if len(chunk) > room:
                    buf += chunk[:room]
                    truncated[key] = True
                    kill("output_limit")
                    continue
                buf += chunk

        async def feed() -> None:
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                if stdin:
                    proc.stdin.write(stdin.encode() if isinstance(stdin, str) else stdin)
                    await proc.stdin.drain()
                proc.stdin.close()

        work = asyncio.gather(pump(proc.stdout, out, "out"), pump(proc.stderr, err, "err"),
                              feed(), proc.wait(), read_status())
        try:
            try:
                await asyncio.wait_for(asyncio.shield(work), limit_s)
            except TimeoutError:
                kill("timeout")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(work, 5.0)
        finally:
            if proc.returncode is None:
                kill("cancelled")
                with contextlib.suppress(TimeoutError, ProcessLookupError):
                    await asyncio.wait_for(asyncio.shield(proc.wait()), 5.0)
            work.cancel()
            transport.close()
            for handle in backstop:
                handle.cancel()
            for fd in init:
                os.close(fd)
        status_text = "\n".join(status_lines)
        duration = time.monotonic() - start
        lines = _parse_status(status_text)
        if "error" in lines:  # written only when the program could not be started
            raise SandboxError(f"sandbox set-up failed: {lines['error']}")
        stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
        exit_code = int(lines["exit"]) if "exit" in lines else None
        sig = int(lines["signal"]) if "signal" in lines else None
        status: ExecStatus
        if killed_for and killed_for[0] in ("timeout", "output_limit"):
            status = "timeout" if killed_for[0] == "timeout" else "output_limit"
            sig = sig or signal.SIGKILL
        elif sig == signal.SIGXCPU:
            status = "timeout"
        elif sig is not None or exit_code is None:
            status = "killed"
        elif exit_code == 0:
            status = "ok"
        elif "MemoryError" in stderr[-2000:]:
            status = "oom"
        else:
            status = "error"
        return ExecResult(status, exit_code if status != "timeout" else None, sig, stdout,
                          stderr, truncated["out"], truncated["err"], duration)
