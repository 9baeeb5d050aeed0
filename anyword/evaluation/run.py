"""A resumable evaluation run, sharded over processes with accelerate.

``RUN_DIR/predictions.jsonl`` holds one record per sample (ids, prediction, timings, or ``error``), written as
each sample finishes; ``RUN_DIR/summary.json`` the metrics over the requested samples. One process appends to
``predictions.jsonl`` itself; several append to their own ``parts/<invocation>-rank<r>.jsonl`` (one line per
finished sample, flushed and synced: safe on shared file systems, where appends from several machines to one file
are not), and the main process waits for every part to be marked done and merges them. At the end
``predictions.jsonl`` is rewritten in the dataset's order, one line per sample, and scored. Rerunning the same command
into the same folder reuses every successful record and computes the rest (failures are retried); a run with
other settings is refused (``run.json`` records what the folder holds). Processes are given samples in turn
(``todo[rank::world]``), so the merged records, and hence the metrics, do not depend on the number of processes.
Parses are kept the same way in ``RUN_DIR/parses.jsonl`` (:mod:`anyword.evaluation.parses`): a rerun never asks a
parser (an LLM) again for a sentence it parsed.

Under ``accelerate launch`` only one collective runs (at the start, all processes alive): the invocation id is
broadcast; the end is a wait on files, so processes that finish hours apart never hit a collective timeout.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from anyword import environment
from anyword.errors import AnywordError
from anyword.evaluation.base import EvalDataset, Sample
from anyword.evaluation.parses import PARSE_PART, PARSES, ParseStore, merge_parse_files, parse_counts
from anyword.evaluation.tasks import Task

RUN_FILE, PREDICTIONS, SUMMARY, PARTS = "run.json", "predictions.jsonl", "summary.json", "parts"
POLL_S = 2.0
WHERE = ("device", "parser_base_url")  # where a run computes, not what: a resumed run may move


@dataclass(frozen=True)
class Processes:
    """This process's place among the evaluation's processes."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


# Where launchers put the number of processes: torchrun (what `accelerate launch --multi_gpu` runs) and MPI
# (what `accelerate launch --cpu --num_processes N --mpirun_hostfile F` runs).
_WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def current_processes() -> tuple[Processes, object | None]:
    """The rank and number of processes from accelerate (1 process when not launched by a multi-process
    launcher), and accelerate's state. Without a GPU the processes talk over gloo on the CPU."""
    if max(environment.read(name, environment.whole_number(1), 1) for name in _WORLD_SIZE_VARIABLES) <= 1:
        return Processes(), None
    import torch
    from accelerate import PartialState

    state = PartialState(
        cpu=not torch.cuda.is_available() or environment.read("ACCELERATE_USE_CPU", environment.flag, False)
    )
    return Processes(state.process_index, state.num_processes), state


def run_identity(dataset: EvalDataset, task: Task, settings, models: dict) -> dict:
    """What makes two runs the same: data, task options, settings, models (not where or on which device)."""
    models = {k: v for k, v in models.items() if k not in WHERE}
    identity = {
        "dataset": dataset.name,
        "split": dataset.split,
        "task": task.name,
        "evaluation": task.describe(),
        "settings": settings.to_dict(),
        "models": models,
    }
    return json.loads(json.dumps(identity))  # as run.json will hold it (lists, not tuples)


def preflight(out: Path) -> None:
    """Refuse, before any model loads, an ``--out`` that can never hold a run: a file, or a folder with other
    things in it."""
    if out.exists() and not out.is_dir():
        raise AnywordError(f"--out {out} is a file; give a folder (it is created if missing)")
    if out.is_dir() and not (out / RUN_FILE).is_file() and any(out.iterdir()):
        raise AnywordError(f"--out {out} is not empty and holds no evaluation run; use an empty or new folder")


def check_run_folder(out: Path, identity: dict) -> None:
    """Refuse a folder holding another run (or anything else); record this run's identity in a new one."""
    record = out / RUN_FILE
    if record.is_file():
        try:
            earlier = json.loads(record.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise AnywordError(
                f"{record} is not a run record ({error}); use another --out folder (or delete it)"
            ) from None
        if not isinstance(earlier, dict):
            raise AnywordError(f"{record} is not a run record (not an object); use another --out folder (or delete it)")
        if earlier != identity:
            changed = sorted(k for k in identity.keys() | earlier.keys() if identity.get(k) != earlier.get(k))
            raise AnywordError(
                f"{out} holds a run with other {', '.join(changed)}; use another --out folder (or delete it)"
            )
        return
    preflight(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(record, json.dumps(identity, indent=1, sort_keys=True))


def read_records(out: Path, skip_invocation: str | None = None) -> dict[str, dict]:
    """Every record in the folder by sample key: a success wins over a failure, a later line over an earlier one.
    A line that is not a record (cut short when a process was killed, not UTF-8 or JSON, not an object with a
    text ``key``) is skipped; so are the parts of ``skip_invocation`` (the running one, which other processes may
    be writing)."""
    records: dict[str, dict] = {}
    parts = sorted((out / PARTS).glob("*.jsonl")) if out.is_dir() else []
    parts = [f for f in parts if skip_invocation is None or not f.name.startswith(f"{skip_invocation}-")]
    for file in [out / PREDICTIONS, *parts]:
        if not file.is_file():
            continue
        for line in file.read_bytes().splitlines():
            record = _record(line)
            if record is None:
                continue
            known = records.get(record["key"])
            if known is None or "error" in known or "error" not in record:
                records[record["key"]] = record
    return records


def _record(line: bytes) -> dict | None:
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("key"), str):
        return None
    if "error" in record and not isinstance(record["error"], str):
        return None
    return record


def usable_records(records: dict[str, dict], dataset: EvalDataset, task: Task, samples: list[Sample]) -> int:
    """Drop from ``records`` the successes that are not well-formed predictions for their sample's image (a
    field missing, a mask of another size); returns how many were dropped (their samples are computed again)."""
    dropped = 0
    for sample in samples:
        record = records.get(sample.key)
        if record is None or "error" in record:
            continue
        try:
            task.check(record, dataset.image_size(sample))
        except AnywordError:
            del records[sample.key]
            dropped += 1
    return dropped


def evaluate_sample(
    pipeline, settings, dataset: EvalDataset, task: Task, sample: Sample, parses: ParseStore, rank: int = 0
) -> dict:
    """One record: the sample's ids and the task's prediction, or ``error`` (the run goes on); ``rank`` is the
    process that made it."""
    record = {"key": sample.key, **sample.ids, "caption": sample.caption, "rank": rank}
    started = time.perf_counter()
    try:
        if sample.problem:
            raise AnywordError(sample.problem)
        image = dataset.image(sample)
        check_truth(dataset, sample, image)  # before the model runs: a sample that cannot be scored is not run
        record.update(task.predict(pipeline, settings, dataset, sample, image, parses))
    except Exception as error:  # one bad sample is recorded; the others go on
        record["error"] = f"{type(error).__name__}: {error}" if not isinstance(error, AnywordError) else str(error)
    record["seconds"] = round(time.perf_counter() - started, 4)
    return record


def check_truth(dataset: EvalDataset, sample: Sample, image) -> None:
    """The sample's ground truth reads, and measures as its image file does."""
    truth = dataset.target(sample).size
    if truth is not None and truth != image.shape[:2]:
        raise AnywordError(
            f"{sample.key}: the image file is {image.shape[1]}x{image.shape[0]} but its ground truth "
            f"{truth[1]}x{truth[0]} (the dataset declares another size)"
        )


def run_evaluation(
    pipeline,
    settings,
    dataset: EvalDataset,
    task: Task,
    out: str | Path,
    start: int = 0,
    n: int | None = None,
    progress: bool = True,
    draw_seed: int | None = None,
) -> dict | None:
    """Evaluate samples ``start .. start+n-1`` into ``out`` (or, with ``draw_seed``, ``n`` samples drawn at random
    from the whole split, kept in the dataset's order); the summary on the main process, ``None`` elsewhere."""
    out = Path(out)
    processes, state = current_processes()
    samples = chosen_samples(dataset, start, n, draw_seed)
    identity = run_identity(dataset, task, settings, pipeline.models())
    invocation = _start(out, identity, processes, state)
    before = read_records(out, skip_invocation=invocation)
    usable_records(before, dataset, task, samples)
    reused = {s.key for s in samples if s.key in before and "error" not in before[s.key]}
    todo = [s for s in samples if s.key not in reused]
    mine = todo[processes.rank :: processes.world]
    parts = out / PARTS
    if processes.world == 1:
        part = out / PREDICTIONS  # one process: predictions.jsonl grows as samples finish
    else:
        parts.mkdir(parents=True, exist_ok=True)
        part = parts / f"{invocation}-rank{processes.rank}.jsonl"
    own_parses = out / PARSES if processes.world == 1 else parts / f"{invocation}-rank{processes.rank}{PARSE_PART}"
    parses = ParseStore(pipeline, [out / PARSES, *sorted(parts.glob(f"*{PARSE_PART}"))], own_parses)
    bar = tqdm(
        mine, desc=f"{dataset.name} {dataset.split} [{processes.rank}]", disable=not progress, position=processes.rank
    )
    with part.open("a", encoding="utf-8") as file:
        if not _ends_with_newline(part):
            file.write("\n")  # a line cut short by a killed run stays apart from the next record
        for sample in bar:
            record = evaluate_sample(pipeline, settings, dataset, task, sample, parses, processes.rank)
            file.write(json.dumps(record) + "\n")
            file.flush()
            os.fsync(file.fileno())
    if processes.world > 1:
        part.with_suffix(".done").touch()
    if not processes.main:
        return None
    _wait_for_parts(parts, invocation, processes.world)
    selection = {"start": start} if draw_seed is None else {"drawn_with_seed": draw_seed}
    return _merge_and_score(out, dataset, task, samples, reused, identity, processes.world, parses.key, selection)


def chosen_samples(dataset: EvalDataset, start: int, n: int | None, draw_seed: int | None) -> list[Sample]:
    """A slice of the split, or ``n`` samples drawn with ``random.Random(draw_seed)`` (in the dataset's order)."""
    every = dataset.samples()
    if draw_seed is None:
        samples = every[start : None if n is None else start + n]
    else:
        if n is None:
            raise AnywordError("drawing samples at random needs their number (--n)")
        drawn = {s.key for s in random.Random(draw_seed).sample(every, min(n, len(every)))}
        samples = [s for s in every if s.key in drawn]
    if not samples:
        raise AnywordError(f"{dataset.name} {dataset.split} has no samples from index {start}")
    return samples


def _start(out: Path, identity: dict, processes: Processes, state) -> str:
    """The main process checks the folder; every process gets the same invocation id, or the same error (the
    only collective of the run, while all processes are alive)."""
    message = None
    if processes.main:
        try:
            check_run_folder(out, identity)
        except AnywordError as error:
            message = str(error)
    shared = [uuid.uuid4().hex[:12], message]
    if state is not None:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(shared, from_process=0)
    if shared[1] is not None:
        raise AnywordError(shared[1])
    return shared[0]


def _wait_for_parts(parts: Path, invocation: str, world: int) -> None:
    while world > 1 and len(list(parts.glob(f"{invocation}-rank*.done"))) < world:
        time.sleep(POLL_S)


def _merge_and_score(out, dataset, task, samples, reused, identity, world, parser_key: str, selection: dict) -> dict:
    records = read_records(out)
    dropped = usable_records(records, dataset, task, samples)
    order = {s.key: i for i, s in enumerate(dataset.samples())}
    lines = sorted(records.values(), key=lambda r: order.get(r["key"], len(order)))
    _write_atomic(out / PREDICTIONS, "".join(json.dumps(r) + "\n" for r in lines))
    merge_parse_files(out, sorted((out / PARTS).glob(f"*{PARSE_PART}")) if (out / PARTS).is_dir() else [])
    if (out / PARTS).is_dir():
        for file in (out / PARTS).iterdir():
            file.unlink()
        (out / PARTS).rmdir()
    summary = summarize(dataset, task, samples, records, reused, identity, world, dropped)
    summary["parses"] = parse_counts(out / PARSES, parser_key, samples)
    summary["samples"].update(selection)
    _write_atomic(out / SUMMARY, json.dumps(summary, indent=1))
    return summary


def summarize(dataset, task, samples, records, reused, identity, world, dropped: int = 0) -> dict:
    """The summary of ``samples`` from their records: counts, metrics (official names, fractions) over the records
    that could be scored, the failures and the records left unscored with their reasons."""
    chosen = [records[s.key] for s in samples if s.key in records]
    ok = [r for r in chosen if "error" not in r]
    by_key = {s.key: s for s in samples}
    seconds = [r["seconds"] for r in ok if r["key"] not in reused and isinstance(r.get("seconds"), int | float)]
    metrics, unscored = task.metrics(dataset, by_key, ok)
    return {
        **identity,
        "data": dataset.describe(),
        "samples": {"first": samples[0].key, "last": samples[-1].key, "count": len(samples)},
        "counts": {
            "done": sum(1 for r in ok if r["key"] not in reused),
            "reused": len(reused),
            "failed": len(chosen) - len(ok),
            "missing": len(samples) - len(chosen),
            "unscored": len(unscored),
            "dropped_records": dropped,
        },
        "failures": [{"key": r["key"], "error": r["error"]} for r in chosen if "error" in r][:50],
        "unscored": unscored[:50],
        "metrics": metrics,
        "seconds_per_sample": sum(seconds) / len(seconds) if seconds else None,
        "processes": world,
    }


def print_table(summary: dict, stream=None) -> None:
    """The metrics as a small table (percentages, as the papers print them), on ``stream`` (default: the
    current ``sys.stderr``, looked up at the call, not at import)."""
    stream = stream or sys.stderr
    metrics = {k: v for k, v in summary["metrics"].items() if isinstance(v, float | int) or v is None}
    counts = summary["counts"]
    print(
        f"{summary['dataset']} {summary['split']}: {counts['done']} done, {counts['reused']} reused, "
        f"{counts['failed']} failed",
        file=stream,
    )
    width = max((len(name) for name in metrics), default=0) + 2
    for name, value in metrics.items():
        shown = "-" if value is None else (f"{100 * value:6.2f}" if isinstance(value, float) else str(value))
        print(f"  {name:<{width}}{shown}", file=stream)


def _ends_with_newline(path: Path) -> bool:
    """Whether ``path`` is empty or its last byte ends a line."""
    with path.open("rb") as file:
        if file.seek(0, os.SEEK_END) == 0:
            return True
        file.seek(-1, os.SEEK_END)
        return file.read(1) == b"\n"


def _write_atomic(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)
