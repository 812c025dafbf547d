"""One child process per local device: how `bench.run --devices` and `bench.tune --workers/--devices` share work.

Each child is the same `python -m bench.X` command a user could start by hand on one device, so what already keeps
several processes or hosts apart keeps the children apart: a claim per model folder (bench.run), the shared study
(bench.tune). The parent only starts, watches and stops them, and does the once-per-command work (the
leaderboard, the study report) after all of them finished.

- Ctrl-C: children run in their own process group, so the terminal's SIGINT reaches the parent alone; it passes
  exactly one SIGINT to each child (a second would cut short the child's saving of its state), and each stops the
  way it does alone: bench.run saves the epoch state, bench.tune keeps its finished trials. A second Ctrl-C (or
  SIGTERM to the parent after the first) terminates them. SIGTERM to the parent counts as a Ctrl-C.
- The parent dies, even by kill -9: on Linux each child gets SIGINT (`follow_parent`), instead of running on unseen.
- A child fails: the others go on (their work does not depend on it); the parent then names each failed child,
  its device, exit code and last error line.
- CPU children share the cores: each gets cores / (number of CPU children) threads unless OMP_NUM_THREADS is set.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

PARENT_ENV = "FASHION_BENCH_FANOUT_PARENT"  # set in children: the parent's pid


def parse_devices(text: str) -> list[str]:
    """`cuda:0,cuda:1` -> ['cuda:0', 'cuda:1']; ValueError naming the fix when the list is empty."""
    devices = [d.strip() for d in text.split(",") if d.strip()]
    if not devices:
        raise ValueError(f"--devices {text!r} names no device; e.g. --devices cuda:0,cuda:1 (or cpu,cpu)")
    return devices


def check_devices(devices: str | None, device: str, pick) -> list[str]:
    """The device names of `--devices LIST`, else [`--device NAME`], each checked with `pick` (the trainer's
    pick_device, which raises ValueError naming --device) before any work starts; a bad entry of the list is named
    as part of --devices, the flag the user gave."""
    names = parse_devices(devices) if devices is not None else [device]
    for name in names:
        try:
            pick(name)
        except ValueError as e:
            if devices is None:
                raise
            reason = str(e).removeprefix(f"--device {name}: ").replace("use --device ", "use ")
            raise ValueError(f"--devices {devices} ({name}): {reason}") from None
    return names


def to_argv(parser: argparse.ArgumentParser, ns: argparse.Namespace, **changes) -> list[str]:
    """Arguments that `parser` parses back into `ns` with `changes` applied (None drops a flag): the child's command
    line is rebuilt from what was parsed, not edited from the user's, so abbreviated flags (--model for --models)
    and `--flag=value` spellings need no special cases."""
    argv = []
    for action in parser._actions:  # argparse has no public list of its arguments
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        value = changes[action.dest] if action.dest in changes else getattr(ns, action.dest)
        if value is None or (value == action.default and action.dest not in changes):
            continue
        long = next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])
        if isinstance(action, argparse.BooleanOptionalAction):
            argv.append(long if value else f"--no-{long[2:]}")
        elif isinstance(action, argparse._StoreTrueAction):
            if value:
                argv.append(long)
        elif type(action) is argparse._StoreAction and action.nargs in (None, "?"):
            argv.append(f"{long}={value}")  # `=`: a value starting with '-' stays a value
        elif type(action) is argparse._AppendAction and action.nargs is None:
            argv.extend(f"{long}={v}" for v in value)
        else:
            raise NotImplementedError(f"to_argv: {long} ({type(action).__name__}) cannot be passed to a child yet")
    return argv


def follow_parent() -> None:
    """In a child started by `run_children`: get SIGINT (stop as on Ctrl-C) when the parent dies, even by kill -9,
    rather than keep a GPU busy unseen (Linux only: prctl PR_SET_PDEATHSIG)."""
    parent = os.environ.pop(PARENT_ENV, None)
    if not parent:
        return
    # SIGINT is how the parent asks a child to stop: honour it even when the parent was started with SIGINT
    # ignored (`cmd &` in a script, nohup), which every child would otherwise inherit
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGINT))  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the parent died before prctl: no signal will come
        os.kill(os.getpid(), signal.SIGINT)


@dataclass
class Child:
    label: str                  # e.g. "cuda:1", or "cpu #2" when a device runs several children
    args: list[str]
    proc: subprocess.Popen | None = None
    last_error: str = ""        # its last stderr line starting with "error:", else its last stderr line
    threads: list[threading.Thread] = field(default_factory=list)

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc else None

    def describe(self) -> str:
        why = f": {self.last_error}" if self.last_error else ""
        return f"the process on {self.label} (pid {self.proc.pid}) exited with code {self.returncode}{why}"


@dataclass
class FanOut:
    children: list[Child]
    interrupted: bool = False

    @property
    def failed(self) -> list[Child]:
        return [c for c in self.children if c.returncode != 0]


def labels_for(devices: list[str]) -> list[str]:
    """One label per child: the device, numbered where a device has several children."""
    return [d if devices.count(d) == 1 else f"{d} #{devices[:i + 1].count(d)}" for i, d in enumerate(devices)]


def run_children(module: str, devices: list[str], arg_lists: list[list[str]], log=print) -> FanOut:
    """Run `python -m module *args` once per (device, args), each line of its output prefixed with its label; return
    when all have exited (see the module docstring for Ctrl-C, a dying parent and failures)."""
    labels = labels_for(devices)
    cpu_children = sum(d == "cpu" for d in devices)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid())}
    if cpu_children and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // cpu_children))
    children = [Child(label, args) for label, args in zip(labels, arg_lists)]
    result = FanOut(children)
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
    try:
        for child in children:
            child.proc = subprocess.Popen([sys.executable, "-m", module, *child.args], env=env, text=True,
                                          errors="replace", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          process_group=0)  # the terminal's Ctrl-C reaches the parent alone
            child.threads = [_forward(child, child.proc.stdout, sys.stdout, False),
                             _forward(child, child.proc.stderr, sys.stderr, True)]
            shown = re.sub(r"(://[^:/@\s]*:)[^@/\s]*@", r"\1***@", " ".join(child.args))  # no passwords in logs
            log(f"[fan-out] {child.label}: pid {child.proc.pid}: python -m {module} {shown}")
        signals = 0
        while any(c.proc.poll() is None for c in children):
            try:
                time.sleep(0.2)
            except KeyboardInterrupt:
                signals += 1
                result.interrupted = True
                sig = signal.SIGINT if signals == 1 else signal.SIGTERM
                running = [c for c in children if c.proc.poll() is None]
                log(f"\n[fan-out] {'interrupted' if signals == 1 else 'interrupted again'}: sending "
                    f"{sig.name} to {', '.join(c.label for c in running)}"
                    + (" (they save their state and stop; Ctrl-C again to terminate them)" if signals == 1 else ""))
                for c in running:
                    c.proc.send_signal(sig)
    except BaseException:  # anything unexpected in the parent: do not leave children running unseen
        for c in children:
            if c.proc and c.proc.poll() is None:
                c.proc.send_signal(signal.SIGINT)
        for c in children:
            if c.proc:
                c.proc.wait()
        raise
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        for c in children:
            for t in c.threads:
                t.join()
    return result


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _forward(child: Child, stream, to, errors: bool) -> threading.Thread:
    def pump():
        for line in stream:
            to.write(f"[{child.label}] {line}")
            to.flush()
            text = line.strip()
            if errors and text and (text.startswith("error:") or not child.last_error.startswith("error:")):
                child.last_error = text
        stream.close()

    t = threading.Thread(target=pump, name=f"fan-out {child.label}", daemon=True)
    t.start()
    return t
