"""Saving that survives a kill: atomic folder writes, one writer per output folder, sha256 manifests.

A run folder (`output_dir`) holds Trainer checkpoints (`checkpoint-N/`) and, once training is done, the final
artefacts with `results.json`, which is written last and marks the folder complete. Everything here is
written to a hidden staging folder next to its destination and moved into place by renames:

- a checkpoint is staged as `.checkpoint-N.partial/checkpoint-N` and renamed to `checkpoint-N` when whole,
  so `get_last_checkpoint` (which matches `^checkpoint-\\d+$`) never sees half of one;
- the final artefacts are staged in `.hftune-final.partial/`; the commit removes the old `results.json`
  first, moves each file in and `results.json` last. A kill during the commit is finished at the next start
  (the staged `results.json` proves the staging was complete); a kill before it leaves the previous
  artefacts untouched and the staging is discarded.

`weights.sha256.json` maps each `*.safetensors` file of a folder to its sha256 (the same format as
`hftune.jsl.artifacts`); `verify_weights` refuses a truncated or altered file by name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from hftune.errors import HftuneError
from hftune.runtime import warn

MANIFEST_NAME = "weights.sha256.json"
COMPLETION_MARKER = "results.json"
FINAL_STAGING = ".hftune-final.partial"
CHECKPOINT_STAGING_SUFFIX = ".partial"
LOCK_NAME = ".hftune.lock"
# Tests set this to hold a save open just before its commit, so a kill lands inside the save.
PAUSE_BEFORE_COMMIT_ENV = "HFTUNE_TEST_PAUSE_BEFORE_COMMIT"


def pause_before_commit(what: str) -> None:
    seconds = float(os.environ.get(PAUSE_BEFORE_COMMIT_ENV, "0") or 0)
    if seconds > 0:
        print(f"hftune: pausing {seconds:g}s before committing {what}", file=sys.stderr, flush=True)
        time.sleep(seconds)


# --- sha256 manifests -------------------------------------------------------------------------------


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_weights_manifest(folder: str | Path) -> dict[str, str]:
    """Record the sha256 of every `*.safetensors` file in `folder` in `weights.sha256.json`."""
    folder = Path(folder)
    manifest = {path.name: file_sha256(path) for path in sorted(folder.glob("*.safetensors"))}
    partial = folder / f"{MANIFEST_NAME}.partial"
    partial.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(partial, folder / MANIFEST_NAME)  # a half-written manifest never counts as one
    return manifest


def verify_weights(run_dir: str | Path, *, require_manifest: bool = False) -> list[Path]:
    """Check every weight file of a saved folder against `weights.sha256.json`; return the files checked.

    Without a manifest (folders from elsewhere) each safetensors header is still parsed, which catches
    truncation; `require_manifest=True` refuses such folders.
    """
    from safetensors import SafetensorError, safe_open

    run_dir = Path(run_dir)
    manifest_path = run_dir / MANIFEST_NAME
    manifest: dict[str, str] = {}
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise HftuneError(
                f"{manifest_path} is not valid JSON ({err}); copy the complete folder again"
            ) from None
    elif require_manifest:
        raise HftuneError(
            f"{run_dir} has no {MANIFEST_NAME}; it was not saved by hftune or was copied incompletely"
        )
    for name, expected in manifest.items():
        path = run_dir / name
        if not path.is_file():
            raise HftuneError(f"{path} is listed in {manifest_path} but missing; copy the complete folder")
        if file_sha256(path) != expected:
            raise HftuneError(
                f"{path} does not match its sha256 in {manifest_path} (truncated or altered); "
                "copy or download the folder again, or re-run the recipe"
            )
    weight_files = sorted(run_dir.glob("*.safetensors"))
    unlisted = [p.name for p in weight_files if manifest and p.name not in manifest]
    if unlisted:
        raise HftuneError(
            f"{run_dir / unlisted[0]} is not listed in {manifest_path}; it was added after the run saved the folder"
        )
    for path in weight_files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as err:
            raise HftuneError(
                f"{path} is not a readable safetensors file ({err}); copy or download it again"
            ) from None
    return weight_files


# --- atomic folders ---------------------------------------------------------------------------------


def replace_directory(staged: str | Path, target: str | Path) -> None:
    """Rename a fully written `staged` folder to `target`, replacing what is there; the old one goes last."""
    staged, target = Path(staged), Path(target)
    backup = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    if target.exists():
        target.rename(backup)
    try:
        staged.rename(target)
    except BaseException:
        if backup.exists():
            backup.rename(target)
        raise
    shutil.rmtree(backup, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder next to `target`; on success it replaces `target` in one rename.

    On an exception the staging folder is removed and `target` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        pause_before_commit(str(target))
        replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _commit_final_files(staging: Path, run_dir: Path) -> None:
    """Move the staged artefacts into the run folder, the completion marker last (idempotent)."""
    (run_dir / COMPLETION_MARKER).unlink(missing_ok=True)
    for item in sorted(staging.iterdir()):
        if item.name != COMPLETION_MARKER:
            target = run_dir / item.name
            if target.is_dir() and not target.is_symlink():
                replace_directory(item, target)
            else:
                os.replace(item, target)
    os.replace(staging / COMPLETION_MARKER, run_dir / COMPLETION_MARKER)
    shutil.rmtree(staging)


@contextlib.contextmanager
def staged_final_artifacts(run_dir: str | Path) -> Iterator[Path]:
    """Yield a staging folder for a run's final artefacts; commit them into `run_dir` when the block ends.

    The block must write `results.json` last. Weight files get a `weights.sha256.json` before the commit.
    An exception (or a kill) inside the block leaves `run_dir`'s previous artefacts as they were.
    """
    run_dir = Path(run_dir)
    staging = run_dir / FINAL_STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        if not (staging / COMPLETION_MARKER).is_file():
            raise RuntimeError(f"the final save into {staging} did not write {COMPLETION_MARKER}")
        write_weights_manifest(staging)
        pause_before_commit(f"the final artefacts of {run_dir}")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _commit_final_files(staging, run_dir)


def checkpoint_staging_dir(run_dir: str | Path, checkpoint_name: str) -> Path:
    """Hidden parent under which `checkpoint_name` is written before its rename into `run_dir`."""
    return Path(run_dir) / f".{checkpoint_name}{CHECKPOINT_STAGING_SUFFIX}"


def recover_run_folder(run_dir: str | Path) -> list[str]:
    """At a run's start: finish an interrupted final commit, drop staging left by killed saves.

    Returns what was done, one line per folder, for the log.
    """
    run_dir = Path(run_dir)
    done: list[str] = []
    if not run_dir.is_dir():
        return done
    final = run_dir / FINAL_STAGING
    if final.is_dir():
        # The manifest is written after results.json: with both present the staging was complete.
        if (final / COMPLETION_MARKER).is_file() and (final / MANIFEST_NAME).is_file():
            _commit_final_files(final, run_dir)
            done.append(f"finished the interrupted final save in {run_dir}")
        else:
            shutil.rmtree(final, ignore_errors=True)
            done.append(f"removed the partial final save {final}")
    for item in sorted(run_dir.iterdir()):
        stale_checkpoint = item.name.startswith(".checkpoint-") and item.name.endswith(
            CHECKPOINT_STAGING_SUFFIX
        )
        stale_backup = item.name.startswith(".checkpoint-") and ".old-" in item.name
        if item.is_dir() and (stale_checkpoint or stale_backup):
            shutil.rmtree(item, ignore_errors=True)
            done.append(f"removed the partial checkpoint {item}")
    return done


# --- one writer per output folder ---------------------------------------------------------------------


def _process_started(pid: int) -> float | None:
    """Start time of a live process (distinguishes a reused pid), or None when it does not exist."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return -1.0  # alive, owned by someone else


class OutputDirLock:
    """`output_dir/.hftune.lock` holding the writer's pid, host and start time.

    A second writer is refused; a lock whose process is gone (same host) is taken over with a warning.
    """

    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / LOCK_NAME
        self.acquired = False

    def _record(self) -> dict:
        import psutil

        return {
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "process_started": psutil.Process().create_time(),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}  # a writer died between creating and filling the file

    def _holder_is_alive(self, holder: dict) -> bool:
        if holder.get("hostname") != socket.gethostname():
            return True  # cannot see processes on another machine: assume it runs
        pid = holder.get("pid")
        if not isinstance(pid, int):
            return False
        started = _process_started(pid)
        if started is None:
            return False
        recorded = holder.get("process_started")
        return started < 0 or recorded is None or abs(started - recorded) < 1.0

    def _in_use(self, holder: dict) -> HftuneError:
        return HftuneError(
            f"output folder {self.output_dir} is in use by pid {holder.get('pid')} on "
            f"{holder.get('hostname')} (started {holder.get('started_at')}, lock {self.path}); "
            "wait for that run to finish or pass another --output_dir"
        )

    def refuse_if_held(self) -> None:
        """Refuse now, without taking the lock, when a live run holds it: the check before any work starts."""
        holder = self._holder()
        if holder and self._holder_is_alive(holder):
            raise self._in_use(holder)

    def acquire(self) -> OutputDirLock:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        record = json.dumps(self._record())
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    continue  # released between our attempt and the read
                if holder and self._holder_is_alive(holder):
                    raise self._in_use(holder) from None
                warn(
                    f"taking over the stale lock {self.path} of pid {holder.get('pid')} on {holder.get('hostname')} "
                    f"(started {holder.get('started_at')}): that process is gone"
                )
                # Replace by rename so two takers cannot both hold it: the later rename wins, the check below sees it.
                tmp = self.path.with_name(f"{LOCK_NAME}.{os.getpid()}.tmp")
                tmp.write_text(record, encoding="utf-8")
                os.replace(tmp, self.path)
            else:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(record)
            if (self._holder() or {}).get("pid") == os.getpid():
                self.acquired = True
                return self
        raise HftuneError(
            f"could not take the lock {self.path}; another run keeps claiming {self.output_dir}"
        )

    def release(self) -> None:
        if self.acquired and (self._holder() or {}).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.acquired = False

    def __enter__(self) -> OutputDirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class OutputDirClaim:
    """What `claim_output_dir` yields: call `training_started()` once a failure should keep the folder."""

    def __init__(self, output_dir: Path, created: bool) -> None:
        self.output_dir = output_dir
        self.created = created
        self.started = False

    def training_started(self) -> None:
        self.started = True


@contextlib.contextmanager
def claim_output_dir(output_dir: str | Path, *, is_main_process: bool = True) -> Iterator[OutputDirClaim]:
    """Lock `output_dir` for this run, tidy what killed runs left, and clean up after an early failure.

    A folder this run created is removed again if the run fails before `training_started()`: bad input
    never leaves an empty or half-written output folder behind. Only the main process locks and tidies.
    """
    output_dir = Path(output_dir)
    created = not output_dir.exists()
    claim = OutputDirClaim(output_dir, created)
    if not is_main_process:
        yield claim
        return
    lock = OutputDirLock(output_dir)
    lock.acquire()  # on refusal the folder is another run's: leave it alone
    try:
        for line in recover_run_folder(output_dir):
            warn(line)
        yield claim
    except BaseException:
        lock.release()
        if created and not claim.started:
            shutil.rmtree(output_dir, ignore_errors=True)
        raise
    lock.release()
