"""The child side of the sandbox: isolate this process, then run one untrusted program.

Started by :mod:`deliberate.verifiers.sandbox` as ``python -I -S -B -c BOOT CONFIG``,
where BOOT imports this file by its directory (so its cached bytecode is used and
nothing but the standard library is needed) and calls :func:`main`; CONFIG is a file
holding a ``marshal``-ed dict, which costs no import to read. It never runs in the
engine's process and imports nothing from ``deliberate``.

What it does, in order (each step only when the config asks for it):

1. ``unshare`` new mount, network, PID, IPC and UTS namespaces (plus a user namespace
   when not root, mapping the caller's own uid), then ``fork``: the child is PID 1 of
   the new PID namespace, so when it dies every process of the program dies with it.
   It finishes the isolation, forks the program (so the program is not PID 1 and
   keeps ordinary signal semantics), reaps orphans and reports the program's end.
2. In the child: make every mount private, expose the interpreter's directories if
   the sandbox uid could not otherwise reach them (root's home holding a pyenv, say)
   behind a fresh tmpfs, mount a size-capped tmpfs as the scratch directory and copy
   the program into it, mount a private ``/dev/shm``, turn every mount read-only
   and nosuid except the scratch directory, and mount a ``/proc`` that shows only the
   namespace's own processes.
3. Resource limits (CPU seconds, address space, processes, file size, open files,
   no core dumps), drop to the sandbox uid/gid when root, ``no_new_privs``, and a
   parent-death signal so the program dies if this launcher is killed.
4. ``execve`` the interpreter in isolated mode (``-I -B``, and ``-S`` unless site
   packages are asked for) on the program with the given (minimal) environment.

The launcher itself stays as the program's parent and reports on a status pipe:
``ready A,B,...`` (what was applied) just before the program starts, ``error
message`` if isolation could not be set up (the program then never runs), and
``exit N`` / ``signal N`` when the program ends.
"""

from __future__ import annotations

# Imports are kept to what every execution can afford: ``_signal`` rather than
# ``signal`` (which pulls in ``enum``), and ``typing`` for the type checker only.
import _signal as signal  # type: ignore[import-not-found]
import ctypes
import marshal
import os
import resource
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2

AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
SYS_MOUNT_SETATTR = {"x86_64": 442, "aarch64": 442}

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38

SETUP_FAILED = 121


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


class SetupError(Exception):
    """Isolation the config asked for could not be applied."""


def _libc() -> ctypes.CDLL:
    # The interpreter's own symbols include libc's; find_library would run ldconfig.
    return ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)} (errno {err})")


def _mount(libc: ctypes.CDLL, src: str | None, dst: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    rc = libc.mount(
        src.encode() if src is not None else None,
        dst.encode(),
        fstype.encode() if fstype is not None else None,
        ctypes.c_ulong(flags),
        data.encode() if data is not None else None,
    )
    _check(rc, f"mount {fstype or src or ''} on {dst}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _unshare(libc: ctypes.CDLL, ns: dict[str, bool]) -> int:
    flags = 0
    for key, flag in (("mount", CLONE_NEWNS), ("net", CLONE_NEWNET), ("pid", CLONE_NEWPID),
                      ("ipc", CLONE_NEWIPC), ("uts", CLONE_NEWUTS), ("user", CLONE_NEWUSER)):
        if ns.get(key):
            flags |= flag
    if not flags:
        return 0
    uid, gid = os.getuid(), os.getgid()
    _check(libc.unshare(ctypes.c_int(flags)), "unshare")
    if flags & CLONE_NEWUSER:
        # Map our own ids so files keep their owners; we hold capabilities only over
        # the new namespaces, never over the host.
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
    return flags


def _set_readonly(libc: ctypes.CDLL, path: str, recursive: bool, clear: bool = False) -> None:
    """mount_setattr(2): read-only + nosuid on ``path`` (and below), or clear read-only."""
    number = SYS_MOUNT_SETATTR.get(os.uname().machine)
    if number is not None:
        attr = _MountAttr(0, MOUNT_ATTR_RDONLY, 0, 0) if clear else _MountAttr(
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, 0, 0)
        rc = libc.syscall(ctypes.c_long(number), ctypes.c_int(AT_FDCWD), path.encode(),
                          ctypes.c_uint(AT_RECURSIVE if recursive else 0),
                          ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
        if rc == 0:
            return
    # Older kernels: remount each mount point below ``path`` read-only by hand.
    flags = MS_REMOUNT | MS_BIND | (0 if clear else MS_RDONLY | MS_NOSUID)
    targets = [path]
    if recursive:
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
        prefix = path.rstrip("/") + "/"
        targets = [p for p in points if p == path or p.startswith(prefix)]
    for target in targets:
        try:
            _mount(libc, None, target, None, flags)
        except SetupError:
            if target == path:
                raise


def _expose(libc: ctypes.CDLL, cfg: dict[str, Any]) -> None:
    """Make directories the sandbox uid cannot reach visible behind a fresh tmpfs.

    ``expose`` maps each covering directory (the top-most ancestor the uid cannot
    enter) to the directories under it the program needs. Each needed directory is
    bind-mounted to a staging point, the covering directory is hidden under an empty
    tmpfs, and the binds are moved back to their original paths inside it.
    """
    stage_root = cfg["stage"]
    for i, (cover, needed) in enumerate(sorted(cfg.get("expose", {}).items())):
        staged = []
        for j, path in enumerate(needed):
            stage = os.path.join(stage_root, f"{i}-{j}")
            os.makedirs(stage, exist_ok=True)
            _mount(libc, path, stage, None, MS_BIND | MS_REC)
            staged.append((stage, path))
        _mount(libc, "tmpfs", cover, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
        for stage, path in staged:
            os.makedirs(path, mode=0o755, exist_ok=True)
            _mount(libc, stage, path, None, MS_BIND | MS_REC)
            _check(libc.umount2(stage.encode(), ctypes.c_int(MNT_DETACH)), f"umount {stage}")


def _filesystem(libc: ctypes.CDLL, cfg: dict[str, Any], uid: int, gid: int) -> list[str]:
    applied = []
    work = cfg["work"]
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    if cfg.get("expose"):
        _expose(libc, cfg)
        applied.append("interpreter_exposed")
    size = int(cfg.get("scratch_bytes") or 0)
    if size:
        with open(os.path.join(cfg["base"], cfg["program"]), "rb") as f:
            program = f.read()
        _mount(libc, "tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV,
               f"size={size},nr_inodes=4096,mode=0700,uid={uid},gid={gid}")
        target = os.path.join(work, cfg["program"])
        with open(target, "wb") as f:
            f.write(program)
        os.chown(target, uid, gid)
        applied.append("scratch_tmpfs")
    else:
        _mount(libc, work, work, None, MS_BIND)
    if os.path.isdir("/dev/shm"):
        _mount(libc, "tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV,
               f"size=16m,mode=0700,uid={uid},gid={gid}")
    _set_readonly(libc, "/", recursive=True)
    _set_readonly(libc, work, recursive=False, clear=True)
    if os.path.isdir("/dev/shm"):
        _set_readonly(libc, "/dev/shm", recursive=False, clear=True)
    applied.append("readonly_root")
    return applied


def _rlimits(limits: dict[str, int]) -> None:
    table = {
        "cpu": resource.RLIMIT_CPU,
        "as": resource.RLIMIT_AS,
        "nproc": resource.RLIMIT_NPROC,
        "fsize": resource.RLIMIT_FSIZE,
        "nofile": resource.RLIMIT_NOFILE,
        "core": resource.RLIMIT_CORE,
    }
    for key, value in limits.items():
        resource.setrlimit(table[key], (int(value), int(value)))


def _child(cfg: dict[str, Any], status: int, libc: ctypes.CDLL, ns_flags: int) -> None:
    """Finish isolating, then exec the program; never returns."""
    try:
        applied: list[str] = []
        uid = cfg.get("uid")
        gid = cfg.get("gid")
        run_uid = uid if uid is not None else os.getuid()
        run_gid = gid if gid is not None else os.getgid()
        if ns_flags & CLONE_NEWNS:
            applied += _filesystem(libc, cfg, run_uid, run_gid)
            if ns_flags & CLONE_NEWPID:
                _mount(libc, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
                applied.append("private_proc")
        os.chdir(cfg["work"])
        _rlimits(cfg["rlimits"])
        if uid is not None and gid is not None:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            applied.append("uid_dropped")
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
        # Set after the uid change, which would clear it.
        _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
        os.closerange(3, status)
        os.closerange(status + 1, 65536)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        flags = ["-I", "-B", "-X", "utf8"] + ([] if cfg.get("site") else ["-S"])
        argv = [cfg["python"], *flags, cfg["program"]]
        os.write(status, f"ready {','.join(applied)}\n".encode())
        if not ns_flags & CLONE_NEWPID:
            os.execve(cfg["python"], argv, cfg["env"])
        program = os.fork()
        if program == 0:
            try:
                os.execve(cfg["python"], argv, cfg["env"])
            except BaseException as exc:
                os.write(status, f"error cannot start the interpreter: {exc}\n".encode()[:4000])
            finally:
                os._exit(127)
    except BaseException as exc:  # report anything, then never run the program
        try:
            os.write(status, f"error {type(exc).__name__}: {exc}\n".encode()[:4000])
        finally:
            os._exit(SETUP_FAILED)
    _init(program, status)


def _init(program: int, status: int) -> None:
    """PID 1 of the namespace: reap every orphan until the program ends, report how it
    ended, then exit, which kills whatever the program left behind.

    Keeping the program off PID 1 gives it ordinary signal semantics (PID 1 ignores
    signals it has no handler for, ``SIGKILL`` from inside included)."""
    try:
        while True:
            pid, wait_status = os.wait()
            if pid == program:
                break
        _report(status, wait_status, "")
    finally:
        os._exit(0)


def _report(status: int, wait_status: int, prefix: str) -> None:
    if os.WIFSIGNALED(wait_status):
        os.write(status, f"{prefix}signal {os.WTERMSIG(wait_status)}\n".encode())
    else:
        os.write(status, f"{prefix}exit {os.WEXITSTATUS(wait_status)}\n".encode())


def main(config_path: str) -> int:
    with open(config_path, "rb") as f:
        cfg = marshal.load(f)
    status = int(cfg["status_fd"])
    os.set_inheritable(status, False)
    libc = _libc()
    try:
        ns_flags = _unshare(libc, cfg.get("namespaces", {}))
    except (SetupError, OSError) as exc:
        os.write(status, f"error {exc}\n".encode())
        return SETUP_FAILED
    pid = os.fork()
    if pid == 0:
        _child(cfg, status, libc, ns_flags)
    if ns_flags & CLONE_NEWPID:
        # The engine kills this init (and with it the whole namespace) on a timeout,
        # leaving this launcher alive to reap it: no zombie outlives the execution.
        os.write(status, f"pid {pid}\n".encode())
    # With a PID namespace the child is its init, which reports the program's end
    # itself; without one the child is the program.
    _, wait_status = os.waitpid(pid, 0)
    _report(status, wait_status, "init " if ns_flags & CLONE_NEWPID else "")
    if cfg.get("uid") is not None and not ns_flags & CLONE_NEWPID:
        _sweep(int(cfg["uid"]))
    return 0


def _sweep(uid: int) -> None:
    """Without a PID namespace, kill whatever the program left running under its uid."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setresuid(uid, uid, uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
