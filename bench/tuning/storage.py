"""Study storage from a URL: the only thing that changes between a laptop and a cluster.

  default                    WORKDIR/studies/fashion.db, an embedded SQLite file (several processes on one machine)
  postgresql://user@host/db  any SQLAlchemy URL: workers on many machines (PostgreSQL needs the driver of the
                             `postgres` extra: pip install -e '.[postgres]')
  journal:PATH               an append-only journal file (no server; no heartbeats, so no killed-trial retry: a
                             killed worker's trial stays RUNNING and other workers stop waiting for it after
                             bench.tune's --wait-timeout)
An in-memory SQLite database (sqlite:///:memory:, sqlite:///, sqlite://) is refused: a study must outlive the process
that runs it (resumed, shared by workers, read by --from-study and the report).
SQL storages run a heartbeat: a trial whose worker stops beating for `grace` seconds is marked failed and re-queued
with the same parameters (up to 3 times), so it is never left RUNNING forever.
Each trial keeps its budget (epochs, size, batch_size, pretrained) in its user attribute `budget` (the study keeps its
first run's); best_params returns it with the tuned parameters, so a retrain trains the way the trial did.
"""
from __future__ import annotations

import importlib.util
import random
import re
import shlex
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend

from bench.errors import StorageError
from bench.workdir import Workdir, resolve

# Where versions before 2026-11-24 kept the study database: in the top-level `studies` package installed beside
# bench/ (in a source checkout, the repository root's studies/). That package is gone (the search spaces are
# bench/tuning/spaces.py), so the folder is now a working folder's studies/ only when the repository root is used
# as the working folder; bench.tune then leaves WORKDIR_MARK beside the database (open_storage), and tuning in
# another folder no longer takes it for one an older version left.
LEGACY_DB = Path(__file__).resolve().parents[2] / "studies" / "fashion.db"
WORKDIR_MARK = ".working-folder"


def default_url(wd: Workdir) -> str:
    """sqlite:///WORKDIR/studies/fashion.db. A study database left in the package folder by an older version is
    not silently forked: the command stops and says how to move it."""
    db = wd.studies / "fashion.db"
    if (not db.exists() and LEGACY_DB.exists() and LEGACY_DB.resolve() != db.resolve()
            and not (LEGACY_DB.parent / WORKDIR_MARK).exists()):
        raise StorageError(f"studies now live in the working folder ({db}), but an older version left a study "
                           f"database at {LEGACY_DB}. Move it there to continue those studies:\n"
                           f"  mkdir -p {db.parent} && mv {LEGACY_DB} {db}\n"
                           f"(or pass --storage sqlite:///{LEGACY_DB} to use it where it is)")
    return f"sqlite:///{db}"


# PostgreSQL drivers SQLAlchemy can use, the one the `postgres` extra installs last. A bare postgresql:// URL means
# SQLAlchemy's default driver, which changed from psycopg2 to psycopg (3) in SQLAlchemy 2.1: naming the installed
# one keeps the URL working under either version, in every worker and in optuna-dashboard.
PG_DRIVERS = (("psycopg", "psycopg"), ("psycopg2", "psycopg2"))


def resolve_url(url: str) -> str:
    """The URL workers connect with: a bare postgresql:// gets the installed driver's name (postgresql+psycopg2://);
    StorageError when no driver is installed."""
    if not url.startswith("postgresql://"):
        return url
    for module, driver in PG_DRIVERS:
        if importlib.util.find_spec(module):
            return url.replace("postgresql://", f"postgresql+{driver}://", 1)
    raise StorageError(f"{url.split('://')[0]}:// storage needs a PostgreSQL driver, and none is installed: "
                       f"pip install -e '.[postgres]' (psycopg2-binary)")


def shown_url(url: str) -> str:
    """The URL to print: a password in it becomes ***, so logs of many workers do not spread it."""
    return re.sub(r"^([\w+.-]+://[^:/@]*:)[^@/]*@", r"\1***@", url)


def dashboard_command(url: str) -> str:
    """The shell command that opens optuna-dashboard on this storage: it reads SQL URLs and journal files alike
    (a journal by its path). A password is shown as ***: put it back, or keep it in ~/.pgpass or $PGPASSWORD."""
    target = url.removeprefix("journal:") if url.startswith("journal:") else shown_url(url)
    return f"optuna-dashboard {shlex.quote(target)}"


def open_storage(url: str | None = None, heartbeat: int = 30, grace: int | None = None, home: Workdir | None = None,
                 create: bool = True):
    """Storage from a URL (None: the default of the working folder `home`, else of $FASHION_BENCH_HOME or the current
    directory); SQL storages get a heartbeat and retry of trials whose worker died.

    A file storage (sqlite:///PATH, journal:PATH) gets its missing folder made only inside the working folder;
    elsewhere the folder must exist, so a mistyped path makes no folders. create=False (reading a study) makes
    nothing: a file that does not exist raises. Any storage that cannot be opened (unknown scheme, no driver,
    server unreachable, file not writable, an in-memory database) raises StorageError naming the URL, before anything
    is made."""
    home = home or resolve()
    given = url or default_url(home)
    url, shown = resolve_url(given), shown_url(given)
    if in_memory(url):
        raise StorageError(f"study storage {shown}: an in-memory SQLite database ends with this process, and a study "
                           f"must outlive it (to be resumed, shared by workers, read by --from-study); name a file, "
                           f"e.g. sqlite:///{home.studies / 'fashion.db'} (the default without --storage)")
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        _check_file(path, shown, home, create)
        try:
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as e:
            raise StorageError(f"study storage {shown}: cannot open {path} ({e.strerror})") from None
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        _check_file(path, shown, home, create)
        if create and path.resolve() == LEGACY_DB.resolve():  # the repository root as working folder (or --storage)
            (path.parent / WORKDIR_MARK).write_text(
                f"bench.tune (2026-11-27 or later) uses {LEGACY_DB} as a working folder's study database, so other "
                f"working folders do not take it for one that a version before 2026-11-24 left here.\n")
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, ProgrammingError, SQLAlchemyError
    for attempt in range(6):
        try:
            with warnings.catch_warnings():  # heartbeats are marked experimental in optuna; they are what we need
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat,
                                  grace_period=grace or 4 * heartbeat,
                                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
        except (IntegrityError, ProgrammingError) as e:
            # workers started together on an empty PostgreSQL database race to create optuna's tables and types
            # ("duplicate key ... pg_type_typname_nsp_index"): the loser tries again and finds them made
            if attempt == 5:
                raise StorageError(f"study storage {shown}: cannot be opened ({_reason(e)})") from None
            time.sleep(0.2 + random.random())
        except ArgumentError as e:
            what = (f"unknown kind {given.split(':')[0]!r}" if isinstance(e, NoSuchModuleError)
                    else f"not a storage URL ({_reason(e)})")
            raise StorageError(f"study storage {shown}: {what}; use sqlite:///PATH, postgresql://USER@HOST/DB (or "
                               f"another SQLAlchemy URL) or journal:PATH") from None
        except (SQLAlchemyError, ImportError) as e:  # bad URL, unreachable server, unwritable file, missing driver
            raise StorageError(f"study storage {shown}: cannot be opened ({_reason(e)})") from None


def in_memory(url: str) -> bool:
    """Whether a SQLAlchemy URL names an SQLite database kept in memory (gone when the process ends)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError
    try:
        u = make_url(url)
    except ArgumentError:
        return False  # not a URL: RDBStorage says so
    if u.get_backend_name() != "sqlite":
        return False
    db = u.database or ""
    return db in ("", ":memory:") or db.startswith("file::memory:") or u.query.get("mode") == "memory"


def _check_file(path: Path, shown: str, home: Workdir, create: bool) -> None:
    """A study file's folder: made when missing inside the working folder, else it must exist (see open_storage)."""
    if path.is_dir():
        raise StorageError(f"study storage {shown}: {path} is a folder; name a file, e.g. {path / 'fashion.db'}")
    if not create:
        if not path.exists():
            raise StorageError(f"no study storage at {shown} ({path} does not exist); run python -m bench.tune first "
                               f"(or pass the study's --storage / --workdir)")
        return
    folder = path.parent
    if folder.is_dir():
        return
    if not folder.resolve().is_relative_to(home.root.resolve()):
        raise StorageError(f"study storage {shown}: the folder {folder} does not exist; create it first (mkdir -p "
                           f"{shlex.quote(str(folder))}) or give a path in the working folder {home.root.resolve()}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"study storage {shown}: cannot make the folder {folder} ({e.strerror})") from None


def _reason(e: BaseException) -> str:
    """The driver's own message (SQLAlchemy wraps it with SQL and a link) on one line."""
    return " ".join(str(getattr(e, "orig", None) or e).split())


def pick_best(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The best trial; for a multi-objective study, the Pareto-front trial with the highest overall accuracy."""
    if len(study.directions) == 1:
        return study.best_trial
    return max(study.best_trials, key=lambda t: t.values[0])


def study_base(study_name: str, storage: str | None = None) -> tuple[str | None, str | None]:
    """(base recipe, model) a study tuned, None where it did not record them."""
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage, create=False))
    return study.user_attrs.get("recipe"), study.user_attrs.get("model")


def best_params(study_name: str, storage: str | None = None) -> dict:
    """Recipe overrides from a study's best trial, its budget included (for `bench.run --from-study`)."""
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage, create=False))
    except KeyError as e:
        raise KeyError(f"no study {study_name!r} in {storage or default_url(resolve())}; run python -m bench.tune "
                       f"first (or pass the study's --storage / --workdir)") from e
    try:
        best = pick_best(study)
    except ValueError as e:
        raise ValueError(f"study {study_name!r} has no completed trial yet") from e
    # a learning rate tuned for 10 epochs is not the one for 30: the trial's budget goes with its parameters
    budget = best.user_attrs.get("budget") or study.user_attrs.get("budget") or {}
    print(f"[study {study_name}] best trial #{best.number} ({best.values}): {best.params}; trial budget {budget} "
          f"(flags given explicitly win)")
    return {**best.params, **budget}
