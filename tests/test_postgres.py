"""Studies on a real PostgreSQL server shared by several `bench.tune` processes (issue #13): exactly N finished
trials, no parameter set twice, a SIGKILLed worker's trial re-run with the same parameters, and the
optuna-dashboard command printed. The fixture starts its own throw-away server (initdb into a temp folder, a free
localhost port, trust auth), so nothing but the server binaries is needed; it skips only when none are found."""
import glob
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from bench.tuning.storage import resolve_url
from bench.tuning.study import FINISHED, counted

# cheap workers: they are real subprocesses (nothing can be monkeypatched), so tiny images, few epochs, one thread
TINY = ["--size", "32", "--batch-size", "16", "--pretrained", "none", "--no-progress", "--no-report",
        "--pruner", "none", "--heartbeat", "1", "--grace", "3"]
SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")


def server_bin() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres: on PATH, else the newest /usr/lib/postgresql/*/bin (Debian
    keeps the server binaries off PATH)."""
    on_path = [shutil.which(b) for b in SERVER_BINARIES]
    if all(on_path) and len(dirs := {os.path.dirname(os.path.realpath(p)) for p in on_path}) == 1:
        return Path(dirs.pop())  # the real folder: /usr/local/bin may hold links to some of them only
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2].split(".")[0]))
    for d in reversed(found):
        if all(os.access(os.path.join(d, b), os.X_OK) for b in SERVER_BINARIES):
            return Path(d)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A fresh PostgreSQL server on 127.0.0.1:<free port> with an empty database `fashion`; its URL. The server
    refuses to run as root, so as root it runs as the `postgres` system user in a temp folder that user owns.
    Stopped and deleted at the end, whatever happened."""
    bindir = server_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl, postgres) on PATH or in "
                    "/usr/lib/postgresql/*/bin; install a server (e.g. apt-get install postgresql) to run this test")
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="fashion-pg-"))
    if os.geteuid() == 0:
        import pwd
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root, and PostgreSQL refuses to: create a `postgres` system user "
                        "(useradd -r postgres) or run the tests as another user")
        os.chown(base, pw.pw_uid, pw.pw_gid)
        runuser = shutil.which("runuser")
        as_user = [runuser, "-u", "postgres", "--"] if runuser else ["su", "postgres", "-s", "/bin/sh", "-c"]

    def run(*cmd, check=True):
        cmd = [str(bindir / cmd[0]), *map(str, cmd[1:])]
        if as_user and as_user[0] == "su":
            cmd = [" ".join(map(shlex.quote, cmd))]
        done = subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)
        if check and done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stdout[-1500:]}"
                               f"{done.stderr[-1500:]}")
        return done

    data, log = base / "data", base / "server.log"
    started = False
    try:
        run("initdb", "-D", data, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8", "--no-locale")
        for _ in range(3):  # the free port may be taken between picking and binding it
            port = free_port()
            opts = (f"-p {port} -c listen_addresses=127.0.0.1 -k {base} -c fsync=off -c synchronous_commit=off "
                    f"-c full_page_writes=off -c max_connections=50")
            started = run("pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "-o", opts, "start",
                          check=False).returncode == 0
            if started:
                break
        assert started, f"PostgreSQL did not start; its log:\n{log.read_text()[-3000:] if log.exists() else '-'}"
        import psycopg2  # the driver the `postgres` extra installs (also in `dev`)
        admin = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        admin.autocommit = True  # CREATE DATABASE cannot run in a transaction
        with admin.cursor() as cur:
            cur.execute("CREATE DATABASE fashion")
        admin.close()
        yield f"postgresql://postgres@127.0.0.1:{port}/fashion"
    finally:
        if started:
            run("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(base, ignore_errors=True)


def spawn(url, study, trials, epochs, log, trials_dir):
    """A real `bench.tune` worker, one torch thread (three share two cores here), output into `log`."""
    cmd = [sys.executable, "-m", "bench.tune", "--data", str(trials_dir.parent / "ds"), "--storage", url,
           "--study", study, "--trials", str(trials), "--epochs", str(epochs), "--trials-dir", str(trials_dir), *TINY]
    out = open(log, "w")
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})


def holder(trial_dir: Path) -> int | None:
    """The pid in a trial folder's claim file: the worker training that trial."""
    try:
        return json.loads((trial_dir / ".claim").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def test_three_workers_share_a_postgres_study_and_retry_a_killed_workers_trial(postgres_url, tiny_root, tmp_path):
    n, study_name = 4, "pg"
    os.symlink(tiny_root, tmp_path / "ds")
    trials_dir = tmp_path / "trials"
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]
    # not created beforehand: the three race to create optuna's tables and the study, as on three fresh machines
    workers = [spawn(postgres_url, study_name, n, 1, log, trials_dir) for log in logs]
    by_pid = {w.pid: w for w in workers}

    def output():
        return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs)

    victim, deadline = None, time.time() + 180
    while victim is None and time.time() < deadline:  # a worker that has started training a trial: kill it
        time.sleep(0.1)
        for trial_dir in sorted(trials_dir.glob(f"{study_name}/trial-*")):
            if holder(trial_dir) in by_pid:
                victim, killed_number = by_pid[holder(trial_dir)], int(trial_dir.name.split("-")[1])
                break
        assert all(w.poll() is None for w in workers), output()
    assert victim is not None, output()
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    for w in workers:
        assert w.wait(timeout=240) == (-signal.SIGKILL if w is victim else 0), output()
    url = resolve_url(postgres_url)  # postgresql+psycopg2://...: the installed driver, named
    study = optuna.load_study(study_name=study_name, storage=url)
    finished = counted(study, FINISHED)
    params = [tuple(sorted(t.params.items())) for t in finished]
    assert len(finished) == n and len(set(params)) == n  # exactly N, none trained twice
    killed = study.trials[killed_number]
    assert killed.state == optuna.trial.TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed_number]
    assert len(retries) == 1 and retries[0].params == killed.params and retries[0].state in FINISHED
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING))
    # every worker says how to watch the study live, with the URL it connects with (the driver named)
    assert all(f"optuna-dashboard {url}\n" in log.read_text() for log in logs), output()
