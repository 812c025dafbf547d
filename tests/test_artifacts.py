"""Folder claims and atomic artifact writes, with real competing processes."""
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bench.artifacts import ClaimError, atomic_path, atomic_write, claim, save_probs, write_json

REPO = Path(__file__).resolve().parents[1]
HOST = socket.gethostname()

# Waits for `go`, claims FOLDER, and holds it until `release` appears; exit 3 with the message when refused.
CLAIMER = r"""
import os, sys, time, pathlib
from bench.artifacts import claim, ClaimError
folder, flags = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
(flags / f"ready.{os.getpid()}").touch()
while not (flags / "go").exists():
    time.sleep(0.002)
try:
    c = claim(folder, heartbeat=None).acquire()
except ClaimError as e:
    print(e)
    sys.exit(3)
while not (flags / "release").exists():
    time.sleep(0.01)
c.release()
"""


def wait_for(condition, what, timeout=60):
    end = time.time() + timeout
    while not condition():
        if time.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def write_claim(folder: Path, **holder) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".claim"
    path.write_text(json.dumps({"started": "2024-01-01T00:00:00+00:00",
                                "command": ["python", "-m", "bench.run", "--models", "resnet18"], **holder}))
    return path


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("stale_before", [False, True], ids=["free", "stale-claim"])
def test_two_processes_race_for_a_folder_exactly_one_wins(tmp_path, stale_before):
    folder, flags = tmp_path / "runs/r/resnet18", tmp_path / "flags"
    flags.mkdir()
    if stale_before:  # both race to take over the same abandoned claim: still only one may win
        write_claim(folder, pid=dead_pid(), host=HOST)
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, str(folder), str(flags)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        wait_for(lambda: len(list(flags.glob("ready.*"))) == 2, "both processes to start")
        (flags / "go").touch()
        wait_for(lambda: any(p.poll() is not None for p in procs), "the loser to give up")
    finally:
        (flags / "release").touch()
    out = [p.communicate(timeout=60) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 3], out
    winner, loser = (procs[0], out[1]) if codes[0] == 0 else (procs[1], out[0])
    assert f"{folder} is in use by pid {winner.pid} on host {HOST} since " in loser[0]
    assert f"delete {folder}/.claim" in loser[0]
    assert not (folder / ".claim").exists()
    assert sorted(os.listdir(folder)) == []  # no renamed-away claim left behind either


def test_claim_of_a_dead_process_is_taken_over(tmp_path):
    pid = dead_pid()
    write_claim(tmp_path, pid=pid, host=HOST)
    with claim(tmp_path, heartbeat=None) as c:
        assert c.took_over.startswith(f"{tmp_path}/.claim: took over an abandoned claim "
                                      f"(its process {pid} on this host is gone): ")
        held = json.loads((tmp_path / ".claim").read_text())
        assert (held["pid"], held["host"], held["command"]) == (os.getpid(), HOST, sys.argv)
    assert not (tmp_path / ".claim").exists()


def test_claim_of_a_reused_pid_is_taken_over(tmp_path):
    # Same pid and host (ours, so alive) but another process start: e.g. a restarted container's trainer.
    write_claim(tmp_path, pid=os.getpid(), host=HOST, proc="another-boot:1")
    with claim(tmp_path, heartbeat=None) as c:
        assert f"pid {os.getpid()} on this host now belongs to another process" in c.took_over


def test_live_claim_in_the_same_process_is_refused(tmp_path):
    with claim(tmp_path, heartbeat=None):
        with pytest.raises(ClaimError, match=f"is in use by pid {os.getpid()} on host {re.escape(HOST)} since "):
            claim(tmp_path, heartbeat=None).acquire()
        assert (tmp_path / ".claim").exists()


@pytest.mark.parametrize("age, taken", [(3600, True), (30, False)])
def test_claim_from_another_host_goes_by_heartbeat_age(tmp_path, age, taken):
    path = write_claim(tmp_path, pid=1, host="other-host.invalid")
    t = time.time() - age
    os.utime(path, (t, t))
    if taken:
        with claim(tmp_path, stale_after=600, heartbeat=None) as c:
            assert re.search(r"\(not refreshed for 360[01] s\)", c.took_over)
        return
    with pytest.raises(ClaimError) as e:
        claim(tmp_path, stale_after=600, heartbeat=None).acquire()
    head = (f"{tmp_path} is in use by pid 1 on host other-host.invalid since 2024-01-01T00:00:00+00:00 "
            f"(command: python -m bench.run --models resnet18); the claim was refreshed ")
    tail = (f" s ago. Wait for it to finish or use another run name. If that process is gone (a claim from another "
            f"host counts as abandoned after 600 s without a refresh), delete {tmp_path}/.claim.")
    assert re.fullmatch(re.escape(head) + "3[01]" + re.escape(tail), str(e.value)), str(e.value)
    assert json.loads(path.read_text())["host"] == "other-host.invalid"


def test_release_removes_only_our_own_claim(tmp_path):
    c = claim(tmp_path, heartbeat=None).acquire()
    theirs = write_claim(tmp_path, pid=1, host="other-host.invalid", token="theirs")  # took it over meanwhile
    before = theirs.read_bytes()
    assert not c.held() and not c.touch()
    c.release()
    assert theirs.read_bytes() == before
    theirs.unlink()
    with pytest.raises(KeyError):
        with claim(tmp_path, heartbeat=None):
            raise KeyError("boom")
    assert os.listdir(tmp_path) == []  # released on an exception too


def test_heartbeat_refreshes_the_claim_and_stops_on_release(tmp_path):
    c = claim(tmp_path, heartbeat=0.05).acquire()
    os.utime(tmp_path / ".claim", (0, 0))
    wait_for(lambda: (tmp_path / ".claim").stat().st_mtime > time.time() - 60, "a heartbeat", timeout=10)
    c.release()
    assert not (tmp_path / ".claim").exists()
    assert not [t for t in threading.enumerate() if t.name == f"claim {tmp_path}"]


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "best.pt"
    target.write_bytes(b"old weights\n")

    def half_then_fail(tmp):
        tmp.write_bytes(b"new wei")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old weights\n"
    assert os.listdir(tmp_path) == ["best.pt"]


def test_concurrent_writers_get_distinct_temps_in_the_same_folder(tmp_path):
    target = tmp_path / "curves.png"
    with atomic_path(target) as a, atomic_path(target) as b:
        assert a != b and a.parent == b.parent == tmp_path
        assert a.suffix == b.suffix == ".png"  # savefig and np.savez pick the format from it
        a.write_bytes(b"A")
        b.write_bytes(b"B")
    assert target.read_bytes() == b"A"  # the last to finish wins, whole
    assert os.listdir(tmp_path) == ["curves.png"]


def test_write_json_and_save_probs_use_unique_temps(tmp_path, monkeypatch):
    temps, real = [], os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (temps.append(Path(src)), real(src, dst))[1])
    write_json({"status": "training"}, tmp_path / "run.json")
    write_json({"status": "done"}, tmp_path / "run.json")
    save_probs(tmp_path / "probs_val.npz", plain=np.zeros((2, 3)))
    save_probs(tmp_path / "probs_val.npz", plain=np.ones((2, 3)))
    assert len(set(temps)) == 4 and all(t.parent == tmp_path for t in temps)
    assert json.loads((tmp_path / "run.json").read_text()) == {"status": "done"}
    with np.load(tmp_path / "probs_val.npz") as z:
        assert z["plain"].tolist() == [[1.0] * 3] * 2
    assert sorted(os.listdir(tmp_path)) == ["probs_val.npz", "run.json"]


def test_two_processes_writing_one_json_never_collide(tmp_path):
    script = ("import sys, pathlib\nfrom bench.artifacts import write_json\n"
              "for i in range(200):\n    write_json({'writer': sys.argv[2], 'i': i}, pathlib.Path(sys.argv[1]))\n")
    target = tmp_path / "run.json"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(target), w], cwd=REPO, stderr=subprocess.PIPE,
                              text=True) for w in "ab"]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert json.loads(target.read_text())["i"] == 199
    assert os.listdir(tmp_path) == ["run.json"]
