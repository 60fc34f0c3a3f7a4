"""The sandbox against hostile programs: each attack contained and reported as a failure,
the engine (this test process), its store and a benign program running at the same
time all unaffected."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deliberate import RunConfig, Store
from deliberate.engine.runner import arun
from deliberate.tasks.task import Task
from deliberate.verifiers.code import CodeExecution
from deliberate.verifiers.sandbox import ExecResult, Sandbox, SandboxLimits

REPO = Path(__file__).resolve().parents[1]
BENIGN = "print(sum(range(1000)))"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the sandbox uses Linux namespaces and rlimits")


@pytest.fixture
def scratch_root() -> Iterator[Path]:
    """A scratch root of this test's own, enterable by the sandbox uid, removed after."""
    root = Path(tempfile.mkdtemp(prefix="sbx-test-", dir="/tmp"))
    root.chmod(0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def sandbox(scratch_root: Path) -> Sandbox:
    return Sandbox(limits(scratch_root, timeout_s=3.0, max_concurrency=2, max_processes=16,
                          memory_bytes=256 << 20, max_output_bytes=64 << 10))


def limits(scratch_root: Path, **kw: Any) -> SandboxLimits:
    return SandboxLimits(scratch_root=str(scratch_root), base_uid=UIDS.start,
                         uid_count=len(UIDS), **kw)


def isolation(sandbox: Sandbox) -> dict[str, Any]:
    return sandbox.isolation()


UIDS = range(63000, 63100)  # this file's own sandbox uids, apart from other test runs


def sandbox_processes() -> list[int]:
    """Processes owned by one of this file's sandbox uids anywhere on the machine."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            uid = os.stat(f"/proc/{entry}").st_uid
        except OSError:
            continue
        if uid in UIDS:
            found.append(int(entry))
    return found


async def with_benign(sandbox: Sandbox, attack: str, **kw: Any) -> ExecResult:
    """Run ``attack`` and a benign program at the same time; the benign one must succeed."""
    attacked, benign = await asyncio.gather(sandbox.run_python(attack, **kw),
                                            sandbox.run_python(BENIGN))
    assert benign.status == "ok", benign
    assert benign.stdout.strip() == "499500"
    return attacked


def exists(path: str) -> bool:
    return os.path.exists(path)


def assert_clean(scratch_root: Path) -> None:
    assert [p.name for p in scratch_root.iterdir()] == []  # scratch directories removed
    if os.geteuid() == 0:
        assert sandbox_processes() == []  # nothing left running


# --------------------------------------------------------------------------- basics


async def test_isolation_is_probed_and_described(sandbox: Sandbox) -> None:
    iso = await sandbox.probe()
    assert iso == sandbox.isolation()
    for key in ("level", "root", "uid_drop", "network", "pid_namespace", "filesystem", "env"):
        assert key in iso
    assert set(iso["env"]) <= {"PATH", "LANG", "HOME", "TMPDIR"}
    if os.geteuid() == 0:  # this machine and CI: everything is enforced
        assert iso["level"] == "namespaces" and iso["uid_drop"] and iso["pid_namespace"]
        assert iso["network"] == "netns" and iso["filesystem"] == "readonly+scratch_tmpfs"


async def test_a_normal_program_runs_with_stdin_and_its_own_scratch(sandbox: Sandbox,
                                                                    scratch_root: Path) -> None:
    prog = ("import os, sys\n"
            "open('note.txt', 'w').write(sys.stdin.read().upper())\n"
            "print(open('note.txt').read(), os.getcwd() == os.environ['HOME'])\n"
            "print('err', file=sys.stderr)\n")
    res = await sandbox.run_python(prog, stdin="hello")
    assert res.status == "ok" and res.exit_code == 0
    assert res.stdout.split() == ["HELLO", "True"]
    assert res.stderr.strip() == "err"
    failing = await sandbox.run_python("raise ValueError('nope')")
    assert failing.status == "error" and failing.exit_code == 1
    assert "ValueError: nope" in failing.stderr
    assert_clean(scratch_root)


async def test_concurrency_is_limited_without_blocking_the_loop(scratch_root: Path) -> None:
    sb = Sandbox(limits(scratch_root, timeout_s=5, max_concurrency=2))
    await sb.probe()
    # Each program prints when it started and ended on the machine's monotonic clock,
    # the one the event loop reads: the test checks the order of events, not durations.
    prog = ("import os, time\n"
            "open('/proc/self/comm').read()\n"
            "start = time.monotonic()\n"
            "time.sleep(0.4)\n"
            "print(os.getuid(), start, time.monotonic())\n")
    ticks: list[float] = []
    loop = asyncio.get_running_loop()

    async def ticker() -> None:
        while True:
            await asyncio.sleep(0.02)
            ticks.append(loop.time())

    t = asyncio.create_task(ticker())
    results = await asyncio.gather(*(sb.run_python(prog) for _ in range(4)))
    t.cancel()
    assert all(r.status == "ok" for r in results)
    runs = [r.stdout.split() for r in results]
    spans = [(float(a), float(b)) for _, a, b in runs]
    # Never more than two at once: at each start, count the programs then running.
    assert max(sum(s <= start < e for s, e in spans) for start, _ in spans) == 2
    # The loop kept running meanwhile: it ticked while each program was running.
    assert all(any(s < tick < e for tick in ticks) for s, e in spans)
    if sb.isolation()["uid_drop"]:
        uids = {int(uid) for uid, _, _ in runs}
        assert uids <= set(UIDS)
    assert_clean(scratch_root)


async def test_signals_exit_codes_and_cancellation(sandbox: Sandbox, scratch_root: Path) -> None:
    res = await sandbox.run_python("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    assert res.status == "killed" and res.signal == 11 and res.exit_code is None
    assert "SIGSEGV" in res.describe()
    res = await sandbox.run_python("import sys\nsys.exit(7)\n")
    assert res.status == "error" and res.exit_code == 7 and res.describe() == "exited with code 7"
    task = asyncio.create_task(sandbox.run_python("import time\ntime.sleep(60)\n",
                                                  timeout_s=30))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_clean(scratch_root)


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        SandboxLimits(timeout_s=0)
    with pytest.raises(ValueError, match="cpu_s"):
        SandboxLimits(cpu_s=-1)
    assert SandboxLimits(timeout_s=2.5).rlimits(2.5)["cpu"] == 4
    assert SandboxLimits().max_concurrency == (os.cpu_count() or 1)


# --------------------------------------------------------------------------- hostile programs


async def test_infinite_loop_is_killed_at_the_wall_clock_limit(sandbox: Sandbox,
                                                               scratch_root: Path) -> None:
    res = await with_benign(sandbox, "while True:\n    pass\n", timeout_s=1.5)
    assert res.status == "timeout" and res.exit_code is None
    assert res.duration_s >= 1.4  # the limit is honoured, not cut short (a feature of time)
    sleeper = await with_benign(sandbox, "import time\ntime.sleep(60)\n", timeout_s=1.0)
    assert sleeper.status == "timeout"
    assert_clean(scratch_root)


async def test_fork_bomb_hits_the_process_limit_and_the_host_still_forks(
        sandbox: Sandbox, scratch_root: Path) -> None:
    counting = ("import os, time\n"
                "n = 0\n"
                "try:\n"
                "    while True:\n"
                "        if os.fork() == 0:\n"
                "            time.sleep(60)\n"
                "            os._exit(0)\n"
                "        n += 1\n"
                "except OSError as e:\n"
                "    print(n, type(e).__name__, flush=True)\n"
                "time.sleep(60)\n")
    res = await with_benign(sandbox, counting, timeout_s=2.0)
    assert res.status == "timeout"
    if sandbox.isolation()["nproc_effective"]:
        forks, error = res.stdout.split()
        assert int(forks) < 16 and error == "BlockingIOError"
    classic = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    res = await with_benign(sandbox, classic, timeout_s=2.0)
    assert res.status == "timeout"
    # the host is unaffected: it still forks, and nothing of the bomb is left
    true = await asyncio.create_subprocess_exec("true")
    assert await true.wait() == 0
    assert_clean(scratch_root)


async def test_memory_bomb_is_stopped_by_the_memory_limit(sandbox: Sandbox,
                                                          scratch_root: Path) -> None:
    res = await with_benign(sandbox, "x = bytearray(4 * 1024 ** 3)\n")
    assert res.status == "oom" and "MemoryError" in res.stderr
    growing = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 ** 2))\n"
    res = await with_benign(sandbox, growing)
    assert res.status in ("oom", "error", "killed") and res.status != "ok"
    assert_clean(scratch_root)


async def test_huge_output_is_capped_and_the_program_killed(sandbox: Sandbox,
                                                            scratch_root: Path) -> None:
    res = await with_benign(sandbox, "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n")
    assert res.status == "output_limit" and res.stdout_truncated
    assert len(res.stdout) == 64 << 10  # killed at the cap: "output_limit", not "timeout"
    res = await with_benign(sandbox, "import os\nwhile True:\n    os.write(2, b'y' * 65536)\n")
    assert res.status == "output_limit" and res.stderr_truncated and not res.stdout_truncated
    big_file = "open('big', 'wb').write(b'z' * (64 * 1024 ** 2))\n"  # over the file-size limit
    res = await with_benign(sandbox, big_file)
    assert res.status == "error" and "File too large" in res.stderr
    assert_clean(scratch_root)


async def test_writing_outside_the_scratch_directory_fails(sandbox: Sandbox,
                                                           scratch_root: Path) -> None:
    tag = secrets.token_hex(6)
    targets = [f"/tmp/sbx-{tag}", f"/root/sbx-{tag}", str(REPO / f"sbx-{tag}"),
               f"/var/tmp/sbx-{tag}", str(scratch_root / f"sbx-{tag}"), f"/etc/sbx-{tag}"]
    prog = (
        "import os\n"
        f"for path in {targets!r}:\n"
        "    try:\n"
        "        with open(path, 'w') as f:\n"
        "            f.write('owned')\n"
        "        print('WROTE', path)\n"
        "    except OSError as e:\n"
        "        print('refused', path, type(e).__name__)\n"
        "try:\n"
        f"    os.mkdir('/tmp/sbx-dir-{tag}')\n"
        "    print('WROTE dir')\n"
        "except OSError as e:\n"
        "    print('refused dir', type(e).__name__)\n"
        f"open('/dev/shm/sbx-{tag}', 'w').write('private')\n"
        "open('inside.txt', 'w').write('fine')\n"
        "print('inside ok')\n"
    )
    res = await with_benign(sandbox, prog)
    assert res.status == "ok", res.stderr
    assert "WROTE" not in res.stdout
    assert res.stdout.count("refused") == len(targets) + 1
    assert "inside ok" in res.stdout
    for path in [*targets, f"/tmp/sbx-dir-{tag}", f"/dev/shm/sbx-{tag}"]:
        assert not exists(path), path
    assert_clean(scratch_root)


async def test_the_engine_environment_is_not_visible(sandbox: Sandbox,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sbx-secret-" + secrets.token_hex(8)
    monkeypatch.setenv("DELIBERATE_TEST_SECRET", secret)
    me = os.getpid()
    prog = (
        "import os\n"
        "print(sorted(os.environ))\n"
        "print(dict(os.environ))\n"
        f"for pid in ({me}, os.getppid(), 1, 'self'):\n"
        "    try:\n"
        "        print(pid, open(f'/proc/{pid}/environ', 'rb').read())\n"
        "    except OSError as e:\n"
        "        print(pid, 'refused', type(e).__name__)\n"
        "for entry in os.listdir('/proc'):\n"
        "    if entry.isdigit():\n"
        "        try:\n"
        "            print(entry, open(f'/proc/{entry}/environ', 'rb').read())\n"
        "        except OSError:\n"
        "            pass\n"
    )
    res = await with_benign(sandbox, prog)
    assert res.status == "ok", res.stderr
    assert secret not in res.stdout and secret not in res.stderr
    visible = eval(res.stdout.splitlines()[0])
    assert set(visible) <= {"PATH", "LANG", "HOME", "TMPDIR"}
    assert f"{me} refused" in res.stdout  # the engine's process is out of reach


async def test_no_network_connection_can_be_opened(sandbox: Sandbox) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        prog = (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n"
            "    print('CONNECTED')\n"
            "except OSError as e:\n"
            "    print('refused', type(e).__name__)\n"
        )
        res = await with_benign(sandbox, prog)
        assert res.status == "ok" and "refused" in res.stdout and "CONNECTED" not in res.stdout
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing reached the engine's listener
    finally:
        listener.close()
    if sandbox.isolation()["network"] != "netns":
        pytest.skip("no network namespace here: a public address is not tried from the sandbox")
    # Only attempted after the program itself sees nothing but a loopback interface,
    # so the packet cannot leave the machine.
    public = (
        "import socket\n"
        "if [n for _, n in socket.if_nameindex()] != ['lo']:\n"
        "    print('NOT ISOLATED')\n"
        "    raise SystemExit(3)\n"
        "try:\n"
        "    socket.create_connection(('1.1.1.1', 53), timeout=2).close()\n"
        "    print('CONNECTED')\n"
        "except OSError as e:\n"
        "    print('refused', type(e).__name__)\n"
        "try:\n"
        "    socket.getaddrinfo('example.com', 80)\n"
        "    print('RESOLVED')\n"
        "except OSError as e:\n"
        "    print('unresolved', type(e).__name__)\n"
    )
    res = await with_benign(sandbox, public)
    assert res.status == "ok", res.stdout + res.stderr
    assert "refused" in res.stdout and "unresolved" in res.stdout


async def test_killing_the_parent_or_its_group_fails(sandbox: Sandbox,
                                                     scratch_root: Path) -> None:
    me, group = os.getpid(), os.getpgid(0)
    prog = (
        "import os, signal\n"
        "attempts = [\n"
        "    lambda: os.kill(os.getppid(), signal.SIGKILL),\n"
        f"    lambda: os.kill({me}, signal.SIGKILL),\n"
        f"    lambda: os.killpg({group}, signal.SIGKILL),\n"
        "    lambda: os.killpg(os.getpgid(0), signal.SIGKILL),\n"
        "    lambda: os.kill(-1, signal.SIGKILL),\n"
        "]\n"
        "for attempt in attempts:\n"
        "    try:\n"
        "        attempt()\n"
        "    except OSError as e:\n"
        "        print('refused', type(e).__name__)\n"
        "print('still here')\n"
    )
    res = await with_benign(sandbox, prog)
    assert res.status in ("ok", "killed")  # it may kill itself, never us
    # this process and its group are alive: we are still running, and can still run code
    follow = await sandbox.run_python(BENIGN)
    assert follow.status == "ok"
    assert_clean(scratch_root)


async def test_hostile_candidates_are_reported_as_failed_verifications(
        scratch_root: Path) -> None:
    sb = Sandbox(limits(scratch_root, timeout_s=3.0, max_processes=16,
                        memory_bytes=256 << 20))
    verifier = CodeExecution(sb, timeout_s=3.0, per_test_timeout_s=1.0)
    task = Task(id="t", prompt="def f(x):\n    '''Return x + 1.'''\n", kind="code",
                entry_point="f", tests="assert f(1) == 2\nassert f(2) == 3\n")
    body = {
        "loop": "    while True:\n        pass\n",
        "fork": "    import os\n    while True:\n        os.fork()\n",
        "memory": "    return len(bytearray(4 * 1024 ** 3))\n",
        "output": "    import sys\n    while True:\n        sys.stdout.write('x' * 65536)\n",
        "exit": "    import os\n    os._exit(0)\n",
        "kill": "    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n"
                "    os.kill(-1, signal.SIGKILL)\n    return x + 1\n",
        "write": "    open('/tmp/sbx-candidate', 'w').write('x')\n    return x + 1\n",
    }
    results = await asyncio.gather(*(
        verifier.verify(task, "def f(x):\n" + b, None) for b in body.values()))
    for name, res in zip(body, results, strict=True):
        assert res.passed is False, (name, res)
        assert res.metrics["tests"] == 2
    assert "time" in results[0].details  # says why: the test did not finish in time
    assert not exists("/tmp/sbx-candidate")
    good = await verifier.verify(task, "def f(x):\n    return x + 1\n", None)
    assert good.passed is True
    assert_clean(scratch_root)


async def test_a_run_writing_to_the_store_keeps_its_data_while_hostile_programs_run(
        tmp_path: Path, sandbox: Sandbox, scratch_root: Path) -> None:
    db = tmp_path / "runs.db"
    attacks = [
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        "x = bytearray(4 * 1024 ** 3)\n",
        f"open({str(db)!r}, 'wb').write(b'garbage')\n",
        f"import os\nos.truncate({str(db)!r}, 0)\n",
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(-1, signal.SIGKILL)\n",
        "while True:\n    pass\n",
    ]
    cfg = RunConfig(suite="arithmetic", strategy="self_consistency",
                    strategy_params={"n": 4}, store=str(db), cache=False, seed=3)
    run, *hostile = await asyncio.gather(
        arun(cfg), *(sandbox.run_python(a, timeout_s=2.0) for a in attacks))
    assert all(h.status != "ok" for h in hostile)
    assert run.summary["tasks"] == 30 and run.summary["failed"] == 0
    async with Store.open(str(db)) as store:
        attempts = await store.get_attempts(run.run_id)
        assert len(attempts) == 30
        assert all(a.status == "done" for a in attempts)
    assert_clean(scratch_root)
