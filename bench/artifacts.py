"""Run artifacts on disk: the contract between training and every later stage.

runs/<run>/<model>/
  run.json          config, dataset fingerprint, init, params, GFLOPs, device, times, throughput, best metrics, status
  last.pt           full training state after the last completed epoch (resume)
  best.pt           weights of the selected epoch
  history.csv       one row per epoch
  curves.png        loss and accuracy per epoch
  probs_val.npz     `plain` and `flip` (N, classes) softmax probabilities, and `labels` (N, attributes)
  probs_test.npz    `plain` and `flip` for the test split
  .claim            while a process trains here: who (see `claim`)

Every file is written through `atomic_path`: readers see the old file or the new one, never half of one, and
concurrent writers never share a temp file.

A run folder may come from someone else (a teammate's runs/, a course's baselines), so what is read from it is
checked, here, for every reader:
- what is read is what was written: a finished run's run.json (`write_run`) records the size and sha256 of each
  artifact in RECORDED (`files`), and `verify` refuses a file that differs (copied over, edited or truncated) before
  any reader uses it; ensemble entries (RUNS/_ensembles/NAME, also written by `write_run`) likewise. Cached TTA views
  carry a digest beside them (`save_cache`/`load_cache`): a changed cache is recomputed, never used. Run folders
  finished before 2026-12-07 record no digests and are read unchecked;
- paths stay inside: a path read from run.json or an entry (`refit.dir`, k-fold folders, member labels) must name a
  place inside its own run (or runs) folder (`inside`): absolute paths, `..` and symlinks out are refused, naming
  the field and the file;
- no artifact runs code: checkpoints are read by bench/checkpoints.py (the restricted unpickler), npz files without
  pickled objects (np.load's allow_pickle=False, its default).
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

import numpy as np


class ArtifactError(RuntimeError):
    pass


RECORDED = ("best.pt", "probs_val.npz", "probs_test.npz", "probs_test_valrun.npz",  # digests in a done run.json
            "probs_train_oof.npz", "probs_heldout.npz")  # a --pool train member's and fold's (training/kfold.py)


def inside(base: str | Path, rel, field: str, source: str | Path) -> Path:
    """`base / rel` for a relative path `rel` read from field `field` of `source` (a run.json or an entry), checked to
    stay inside `base`: ArtifactError for an absolute path, a `..` component or a symlink that leads out."""
    base = Path(base)
    bad = not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts \
        or "\\" in rel
    if not bad:
        path = base / rel
        bad = not path.resolve().is_relative_to(base.resolve())
    if bad:
        raise ArtifactError(f"{source}: field {field} is {rel!r}, which is not a path inside {base} (absolute paths, "
                            f"'..' and links out of the folder are refused: a run folder from elsewhere may only "
                            f"point inside itself)")
    return path


def digest(path: str | Path) -> dict:
    """{"size": bytes, "sha256": hex} of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"size": os.path.getsize(path), "sha256": h.hexdigest()}


def write_run(meta: dict, folder: str | Path) -> dict:
    """Write `folder/run.json` from `meta`; a finished run (status done) first records the size and sha256 of each of
    its RECORDED artifacts present (`files`), which every later reader checks (`verify`). Returns `meta`."""
    folder = Path(folder)
    meta.pop("files", None)
    if meta.get("status") == "done":
        meta["files"] = {name: digest(folder / name) for name in RECORDED if (folder / name).is_file()}
    write_json(meta, folder / "run.json")
    return meta


_meta_cache: dict[tuple, dict] = {}
_verified: set[tuple] = set()


def _folder_meta(folder: Path) -> dict | None:
    """run.json of `folder` (None when there is none or it is unreadable: read_run reports that), cached by mtime."""
    path = folder / "run.json"
    try:
        st = path.stat()
    except OSError:
        return None
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _meta_cache:
        try:
            _meta_cache[key] = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
    return _meta_cache[key]


def verify(path: str | Path) -> Path:
    """`path`, after checking it against the size and sha256 its run folder's run.json recorded when the run finished
    (ArtifactError naming the file when it differs: copied over, edited or truncated; or when it leads out of its
    folder). Files of unfinished runs, runs finished before digests were recorded, and files that are not RECORDED
    artifacts pass unchecked. A file is hashed once per process while its size and mtime stay the same."""
    path = Path(path)
    if path.name not in RECORDED:
        return path
    meta = _folder_meta(path.parent)
    files = meta.get("files") if isinstance(meta, dict) else None
    if not isinstance(files, dict):
        return path
    inside(path.parent, path.name, path.name, path.parent / "run.json")  # a symlink out of the folder
    rec = files.get(path.name)
    if rec is None:
        if path.exists():
            raise ArtifactError(f"{path}: not recorded in {path.parent / 'run.json'}, which lists {', '.join(files)}: "
                                f"it was not written by the run that finished there (copied in later?); delete it, "
                                f"or retrain the run")
        return path
    try:
        st = path.stat()
    except OSError:
        return path  # missing: the reader says so in its own words
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, rec.get("sha256"))
    if key in _verified:
        return path
    now = digest(path) if st.st_size == rec.get("size") else {"size": st.st_size, "sha256": None}
    if now != {"size": rec.get("size"), "sha256": rec.get("sha256")}:
        was = f"{rec.get('size')} bytes, sha256 {str(rec.get('sha256'))[:16]}"
        has = f"{now['size']} bytes" + (f", sha256 {now['sha256'][:16]}" if now["sha256"] else "")
        raise ArtifactError(f"{path}: changed since training (copied over, edited or truncated): "
                            f"{path.parent / 'run.json'} records {was}, the file has {has}. Restore the file that "
                            f"run wrote, or retrain it (--force)")
    _verified.add(key)
    return path


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """A run folder's npz artifact as a dict of arrays, verified first (`verify`); no pickled objects are read."""
    with np.load(verify(path)) as z:
        return {k: z[k] for k in z.files}


def _cache_digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_cache(path: str | Path, **arrays) -> None:
    """A cache npz (e.g. computed TTA views) with its digest beside it (`PATH.sha256`), so `load_cache` can tell a
    changed file from the one written."""
    path = Path(path)
    save_probs(path, **arrays)
    atomic_write(_cache_digest_path(path), lambda tmp: tmp.write_text(json.dumps(digest(path))))


def load_cache(path: str | Path) -> dict[str, np.ndarray] | None:
    """The cache's arrays, or None when it is missing, has no digest, or differs from its digest (recompute it)."""
    path = Path(path)
    try:
        recorded = json.loads(_cache_digest_path(path).read_text())
    except (OSError, ValueError):
        return None
    if not path.is_file() or digest(path) != recorded:
        return None
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@dataclass
class RunArtifacts:
    dir: Path
    meta: dict

    @property
    def label(self) -> str:
        """`run/model`, the name a member has on leaderboards."""
        return f"{self.dir.parent.name}/{self.dir.name}"

    @property
    def done(self) -> bool:
        return self.meta.get("status") == "done"

    def checkpoint(self, split: str) -> Path:
        """The weights that produced `split`'s stored probabilities: best.pt, except a refit member's test split,
        which its refit model (refit/best.pt) predicted."""
        refit = self.meta.get("refit")
        if split == "test" and refit:
            return self.sub(refit.get("dir", "refit") if isinstance(refit, dict) else None, "refit.dir") / "best.pt"
        return self.dir / "best.pt"

    def sub(self, rel, field: str) -> Path:
        """A folder or file named by field `field` of run.json, checked to lie inside this run's folder (`inside`)."""
        return inside(self.dir, rel, field, self.dir / "run.json")

    def probs_path(self, split: str) -> Path:
        return self.dir / f"probs_{split}.npz"

    def has_probs(self, split: str) -> bool:
        return self.probs_path(split).exists()

    def load_probs(self, split: str) -> dict[str, np.ndarray]:
        path = self.probs_path(split)
        if not path.exists():
            raise ArtifactError(f"{path}: missing; re-run training or `python -m bench.ensemble` recomputes it "
                                f"from {self.dir / 'best.pt'}")
        return load_npz(path)


def read_run(model_dir: Path) -> RunArtifacts:
    path = Path(model_dir) / "run.json"
    try:
        return RunArtifacts(Path(model_dir), json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: unreadable run metadata ({e})") from e


def find_runs(root: str | Path = "runs", runs: list[str] | None = None, models: list[str] | None = None,
              done_only: bool = False) -> list[RunArtifacts]:
    """Every runs/<run>/<model>/run.json, optionally filtered by run and model names."""
    root = Path(root)
    found = []
    for path in sorted(root.glob("*/*/run.json")):
        art = read_run(path.parent)
        if runs and art.dir.parent.name not in runs and art.label not in runs:
            continue
        if models and art.dir.name not in models:
            continue
        if done_only and not art.done:
            continue
        found.append(art)
    return found


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path next to `path`, unique to this writer, to write the file to; on success it replaces `path`
    atomically, on an exception it is removed and `path` is left as it was.

    The temp name keeps the extension (`.best.<pid>.<rand>.tmp.pt`) so tools that choose a format from it
    (np.savez, savefig) write the right one; it starts with '.' so listings can tell it from finished files."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)  # same folder, so same filesystem: atomic
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, writer: Callable[[Path], object]) -> None:
    """`writer(tmp)` writes the file's content to tmp; then it atomically becomes `path` (see atomic_path)."""
    with atomic_path(path) as tmp:
        writer(tmp)


def write_json(obj: dict, path: Path) -> None:
    text = json.dumps(obj, indent=2, default=str)  # before any file exists: a bad value leaves nothing behind
    atomic_write(path, lambda tmp: tmp.write_text(text))


def save_probs(path: Path, **arrays) -> None:
    atomic_write(path, lambda tmp: np.savez_compressed(tmp, **arrays))


class ClaimError(RuntimeError):
    """Another live process is working in the folder."""


CLAIM_FILE = ".claim"
HEARTBEAT_S = 60.0    # how often a holder refreshes its claim file's mtime
STALE_AFTER_S = 600.0  # a claim from another host not refreshed for this long is abandoned


class Claim:
    """An exclusive claim on a folder (e.g. runs/<run>/<model>), so that two processes, on one host or on several
    sharing a filesystem, never work in it at once. Use `with claim(folder):`.

    `<folder>/.claim` is created with O_CREAT|O_EXCL and holds {pid, host, started, command, proc, token}. A claim
    whose holder is gone is taken over: on the same host when its pid no longer exists or now belongs to another
    process (`proc`, the kernel boot id and process start time, tells them apart on Linux); from another host, whose
    pids cannot be checked, when its heartbeat (the file's mtime, refreshed every `heartbeat` seconds by a thread)
    is older than `stale_after` seconds. Hosts are told apart by socket.gethostname(), so containers sharing a
    filesystem need distinct host names, and hosts sharing one need roughly synchronised clocks."""

    def __init__(self, folder: str | Path, stale_after: float = STALE_AFTER_S, heartbeat: float | None = HEARTBEAT_S):
        self.folder, self.path = Path(folder), Path(folder) / CLAIM_FILE
        self.stale_after, self.heartbeat = stale_after, heartbeat
        self.record = {"pid": os.getpid(), "host": socket.gethostname(),
                       "started": datetime.now().astimezone().isoformat(timespec="seconds"),
                       "command": list(sys.argv), "proc": _proc_identity(os.getpid()), "token": secrets.token_hex(8)}
        self.took_over: str | None = None  # why the previous claim counted as abandoned, when one was taken over
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> Claim:
        self.folder.mkdir(parents=True, exist_ok=True)
        data = json.dumps(self.record).encode()
        for _ in range(20):  # each pass either wins, raises, or saw a claim vanish or be taken over meanwhile
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            if self.heartbeat:
                self._thread = threading.Thread(target=self._beat, name=f"claim {self.folder}", daemon=True)
                self._thread.start()
            return self
        raise ClaimError(f"{self.path}: could not take the claim: other processes keep replacing it")

    def _take_over_if_stale(self) -> None:
        """Raise ClaimError if the existing claim is live; otherwise move it away (if no one else did first)."""
        try:
            raw, age = self.path.read_bytes(), time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return  # released meanwhile: try again
        try:
            holder = json.loads(raw)
        except ValueError:
            holder = None
        if not isinstance(holder, dict):  # being written right now, or garbage: only its age can tell
            holder = {}
            if age < 2:
                time.sleep(0.1)
                return
        pid, host = holder.get("pid"), holder.get("host")
        if host == self.record["host"] and isinstance(pid, int):
            reason = _gone(pid, holder.get("proc"))
        else:
            reason = f"not refreshed for {age:.0f} s" if age > self.stale_after else None
        if reason is None:
            who = (f"pid {pid} on host {host} since {holder.get('started')} "
                   f"(command: {' '.join(map(str, holder.get('command') or [])) or '?'})" if holder else
                   "an unreadable claim")
            raise ClaimError(
                f"{self.folder} is in use by {who}; the claim was refreshed {age:.0f} s ago. Wait for it to finish "
                f"or use another run name. If that process is gone (a claim from another host counts as abandoned "
                f"after {self.stale_after:.0f} s without a refresh), delete {self.path}.")
        # Rename, not unlink: of two processes taking over the same stale claim only one can move it away. The one
        # that moved something else (a fresh claim made meanwhile by the winner) puts it back.
        grave = self.path.with_name(f"{CLAIM_FILE}.stale.{os.getpid()}.{secrets.token_hex(4)}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return
        try:
            if grave.read_bytes() != raw:
                try:
                    os.link(grave, self.path)
                except FileExistsError:
                    pass
            else:
                self.took_over = (f"{self.path}: took over an abandoned claim ({reason}): "
                                  f"{raw.decode(errors='replace')}")
                print(f"note: {self.took_over}", file=sys.stderr)
        finally:
            grave.unlink(missing_ok=True)

    def held(self) -> bool:
        """Whether the claim file is still ours (it is not if another process took it over as abandoned)."""
        try:
            return json.loads(self.path.read_bytes()).get("token") == self.record["token"]
        except (OSError, ValueError, AttributeError):  # gone, half-written, or not a claim
            return False

    def touch(self) -> bool:
        """Refresh the heartbeat; False if the claim is no longer ours."""
        if not self.held():
            return False
        try:
            os.utime(self.path)
        except FileNotFoundError:
            return False
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat) and self.touch():
            pass

    def release(self) -> None:
        """Remove the claim file if it is still ours."""
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self.held():  # a takeover between this check and the unlink needs a holder silent for stale_after
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Claim:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def claim(folder: str | Path, stale_after: float = STALE_AFTER_S, heartbeat: float | None = HEARTBEAT_S) -> Claim:
    """`with claim(folder):` work in folder exclusively; ClaimError names the live holder otherwise."""
    return Claim(folder, stale_after, heartbeat)


def _proc_identity(pid: int) -> str | None:
    """Kernel boot id and start time of process `pid`: unlike the pid, never reused (Linux; None elsewhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"  # field 22, starttime; the name in (...) may hold spaces


def _gone(pid: int, proc: str | None) -> str | None:
    """Why process `pid` of this host, started as `proc`, no longer runs; None while it does."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"its process {pid} on this host is gone"
    except PermissionError:  # exists, owned by another user
        pass
    now = _proc_identity(pid)
    if proc and now and now != proc:  # e.g. a restarted container whose trainer got the same pid again
        return f"pid {pid} on this host now belongs to another process"
    return None
