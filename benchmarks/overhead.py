"""Benchmark: what does Ricordo's update loop cost over a hand-written PyTorch loop?

The same experience-replay (ER) run goes through four implementations: digits, class-incremental,
5 chunks; the MLP (256, 128) Ricordo builds; SGD lr 0.05; each step 32 new rows + 32 rows replayed
from a reservoir memory of 200; 20 epochs per chunk; seed 0.

- ``plain loop``: a hand-written PyTorch loop that reproduces Ricordo's seeding exactly (same
  model initialisation, same per-update generator for the batch order and the head growth) and
  uses ``TensorMemory`` for the reservoir, so it should end with bit-identical weights;
- ``plain loop, list reservoir``: the same loop with the per-sample Python-list reservoir most
  people write (``random.Random`` placement, ``torch.stack`` to build the replay batch);
- ``ricordo torch``: ``Updater(..., backend="torch")``, five ``update`` calls;
- ``ricordo fabric``: the same on Lightning Fabric (``backend="fabric"``).

Timings cover model construction and the five updates (data loading excluded). Variants are
interleaved (the order rotates every repeat) and the median of ``--repeats`` runs is reported with
a fixed number of torch threads (1 and 2 by default), after one untimed warm-up run of each variant
that absorbs one-off costs (imports made on the first optimizer step or by Fabric, allocator
warm-up). ``--profile`` adds a per-component breakdown (median of instrumented runs) of the plain
loop, ``ricordo torch`` and ``ricordo fabric``: each probed function's exclusive time (the time of
probed functions it calls is subtracted; the probes themselves add a few microseconds per call,
which land in the caller).

Usage: ``python benchmarks/overhead.py [--repeats 5] [--threads 1 2] [--epochs 20] [--profile]``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from _common import machine, median, spread, table
from torch import nn
from torch.nn import functional as F

from ricordo import Updater
from ricordo.data import Scenario, load_builtin, make_scenario
from ricordo.memory import TensorMemory

SEED = 0
CHUNKS = 5
MEMORY = 200
LR = 0.05
BATCH = 32
HIDDEN = (256, 128)

Result = dict[str, torch.Tensor]  # final weights (and memory contents where there is one)
Variant = Callable[[Scenario, int], Result]


def derive_seed(seed: int, update_index: int) -> int:
    """The per-update seed of ``ricordo.updater._derive_seed`` (copied: a plain user knows it)."""
    return (seed * 1_000_003 + update_index * 7_919) % (2**63 - 1)


# ------------------------------------------------------------------------------ plain PyTorch


def build_mlp(input_dim: int, classes: int) -> nn.Sequential:
    """Ricordo's built-in MLP, initialised from ``torch.manual_seed(SEED)``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        layers: list[nn.Module] = [nn.Flatten()]
        width = input_dim
        for size in HIDDEN:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, classes))
        return nn.Sequential(*layers)


def grow_head(model: nn.Sequential, classes: int, generator: torch.Generator) -> None:
    """Widen the last Linear to ``classes`` outputs; new rows use Linear's default init."""
    old = model[-1]
    assert isinstance(old, nn.Linear)
    if classes <= old.out_features:
        return
    new = nn.Linear(old.in_features, classes)
    bound = 1.0 / old.in_features**0.5
    with torch.no_grad():
        new.weight.uniform_(-bound, bound, generator=generator)
        new.weight[: old.out_features] = old.weight
        new.bias.uniform_(-bound, bound, generator=generator)
        new.bias[: old.out_features] = old.bias
    model[-1] = new


def plain_tensor_memory(scenario: Scenario, epochs: int) -> Result:
    """Hand-written loop; reservoir and replay sampling through ``TensorMemory``."""
    first = scenario.train[0]
    model = build_mlp(math.prod(first.feature_shape), max(first.classes()) + 1)
    memory = TensorMemory(MEMORY, "reservoir", seed=SEED)
    seen: set[int] = set()
    for k, chunk in enumerate(scenario.train):
        generator = torch.Generator().manual_seed(derive_seed(SEED, k))
        seen |= set(chunk.classes())
        grow_head(model, max(seen) + 1, generator)
        optimizer = torch.optim.SGD(model.parameters(), lr=LR)
        x_all, y_all, n = chunk.x, chunk.y, len(chunk)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, BATCH):
                index = order[start : start + BATCH]
                x, y = x_all[index], y_all[index]
                if len(memory):
                    replay = memory.sample(BATCH)
                    inputs = torch.cat([x, replay["x"]])
                    targets = torch.cat([y, replay["y"]])
                else:
                    inputs, targets = x, y
                loss = F.cross_entropy(model(inputs), targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                memory.add({"x": x, "y": y})
    stored = memory.get()
    return {**model.state_dict(), "memory.x": stored["x"], "memory.y": stored["y"]}


def plain_list_reservoir(scenario: Scenario, epochs: int) -> Result:
    """Hand-written loop with the usual per-sample Python-list reservoir (not bit-identical)."""
    first = scenario.train[0]
    model = build_mlp(math.prod(first.feature_shape), max(first.classes()) + 1)
    rng = random.Random(SEED)
    buffer: list[tuple[torch.Tensor, torch.Tensor]] = []
    offered = 0
    seen: set[int] = set()
    for k, chunk in enumerate(scenario.train):
        generator = torch.Generator().manual_seed(derive_seed(SEED, k))
        seen |= set(chunk.classes())
        grow_head(model, max(seen) + 1, generator)
        optimizer = torch.optim.SGD(model.parameters(), lr=LR)
        x_all, y_all, n = chunk.x, chunk.y, len(chunk)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, BATCH):
                index = order[start : start + BATCH]
                x, y = x_all[index], y_all[index]
                if buffer:
                    picked = rng.sample(buffer, min(BATCH, len(buffer)))
                    inputs = torch.cat([x, torch.stack([p[0] for p in picked])])
                    targets = torch.cat([y, torch.stack([p[1] for p in picked])])
                else:
                    inputs, targets = x, y
                loss = F.cross_entropy(model(inputs), targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                for xi, yi in zip(x, y, strict=True):  # reservoir sampling, one item at a time
                    if len(buffer) < MEMORY:
                        buffer.append((xi, yi))
                    else:
                        j = rng.randint(0, offered)
                        if j < MEMORY:
                            buffer[j] = (xi, yi)
                    offered += 1
    return dict(model.state_dict())


# ------------------------------------------------------------------------------ Ricordo


def ricordo_run(scenario: Scenario, epochs: int, backend: str) -> Result:
    updater = Updater(
        method="er",
        memory_size=MEMORY,
        epochs=epochs,
        lr=LR,
        batch_size=BATCH,
        seed=SEED,
        progress=False,
        backend=backend,
    )
    for chunk in scenario.train:
        updater.update(chunk)
    assert updater.model is not None and updater.memory is not None
    stored = updater.memory.get()
    state = {k: v.detach().clone() for k, v in updater.model.state_dict().items()}
    return {**state, "memory.x": stored["x"], "memory.y": stored["y"]}


VARIANTS: dict[str, Variant] = {
    "plain loop (TensorMemory)": plain_tensor_memory,
    "plain loop, list reservoir": plain_list_reservoir,
    "ricordo torch": functools.partial(ricordo_run, backend="torch"),
    "ricordo fabric": functools.partial(ricordo_run, backend="fabric"),
}
BASELINE = "plain loop (TensorMemory)"


def compare(reference: Result, other: Result) -> str:
    """'bit-identical', or the largest absolute difference over the shared tensors."""
    if reference.keys() != other.keys():
        return f"different tensors: {sorted(set(reference) ^ set(other))}"
    if all(torch.equal(reference[k], other[k]) for k in reference):
        return "bit-identical"
    worst = max((reference[k].double() - other[k].double()).abs().max().item() for k in reference)
    return f"differs (max |diff| {worst:.3g})"


# ------------------------------------------------------------------------------ timing


def time_variants(
    scenario: Scenario, epochs: int, repeats: int, threads: int
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, Result]]:
    """Wall and CPU seconds of every repeat of every variant, interleaved; each last result.

    CPU time (all threads of this process) is less disturbed by other processes competing for
    the cores than wall time, so it is a second, steadier signal on a shared machine.
    """
    torch.set_num_threads(threads)
    names = list(VARIANTS)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    results: dict[str, Result] = {}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:  # rotate so no variant always runs first
            start, start_cpu = time.perf_counter(), time.process_time()
            results[name] = VARIANTS[name](scenario, epochs)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu, results


# ------------------------------------------------------------------------------ profile


class Clock:
    """Exclusive wall time per named component: nested timed calls are subtracted."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._stack: list[float] = []  # time of timed children, one entry per open call

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._stack.append(0.0)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                children = self._stack.pop()
                self.seconds[name] = self.seconds.get(name, 0.0) + elapsed - children
                self.calls[name] = self.calls.get(name, 0) + 1
                if self._stack:
                    self._stack[-1] += elapsed

        return timed


# (owner, attribute, component): what the profile times, in both loops where it applies.
PROBES: list[tuple[Any, str, str]] = [
    (torch.Tensor, "__getitem__", "batch indexing (tensor[index])"),
    (torch, "randperm", "epoch order (randperm)"),
    (torch, "cat", "torch.cat (new + replay)"),
    (TensorMemory, "sample", "memory.sample"),
    (TensorMemory, "add", "memory.add"),
    (nn.Sequential, "forward", "forward"),
    (F, "cross_entropy", "cross_entropy"),
    (torch.optim.Optimizer, "zero_grad", "zero_grad"),
    (torch.Tensor, "backward", "backward"),
    (torch.optim.SGD, "step", "optimizer.step"),
    (sys.modules[__name__], "build_mlp", "model construction"),
    (sys.modules[__name__], "grow_head", "head growth"),
]


def ricordo_probes() -> list[tuple[Any, str, str]]:
    """Ricordo-only components (imported here so the timed runs see unpatched modules)."""
    from ricordo import updater as updater_module
    from ricordo.data.dataset import ArrayDataset
    from ricordo.engine import backend as backend_module
    from ricordo.engine import loop as loop_module
    from ricordo.engine.progress import Progress
    from ricordo.methods.er import ExperienceReplay

    return [
        (updater_module, "train_update", LOOP_BODY),
        (ExperienceReplay, "loss", "ER.loss + replay_batch (own lines)"),
        (ExperienceReplay, "after_step", "ER.after_step (own lines)"),
        (backend_module.TorchBackend, "backward", "backend.backward (own lines)"),
        (backend_module.FabricBackend, "backward", "backend.backward (own lines)"),
        (Progress, "advance", "progress.advance"),
        (Progress, "__enter__", "progress bar setup"),
        (loop_module, "make_backend", "make_backend (Fabric: construction)"),
        (loop_module, "make_optimizer", "make_optimizer"),
        (updater_module.Updater, "_snapshot", "Updater: deepcopy for rollback"),
        (updater_module, "fingerprint", "Updater: data fingerprint (sha256)"),
        (ArrayDataset, "validate", "Updater: chunk validation"),
        (updater_module.Updater, "_build_first_model", "model construction"),
        (updater_module, "grow_output_layer", "head growth"),
    ]


def fabric_probes() -> list[tuple[Any, str, str]]:
    """Lightning Fabric's wrappers around the model, backward and the optimizer."""
    from lightning.fabric import Fabric
    from lightning.fabric.wrappers import _FabricModule, _FabricOptimizer

    return [
        (Fabric, "setup", "Fabric: setup"),
        (Fabric, "backward", "Fabric: backward wrapper"),
        (_FabricModule, "forward", "Fabric: module wrapper"),
        (_FabricOptimizer, "step", "Fabric: optimizer wrapper"),
    ]


LOOP_BODY = "training loop body (own lines)"
REST = "untimed rest (Updater glue, ...)"


@contextlib.contextmanager
def patched(clock: Clock, probes: list[tuple[Any, str, str]]) -> Iterator[None]:
    """Wrap every probe with the clock; restore the exact originals afterwards."""
    missing = object()
    saved = [(owner, attr, vars(owner).get(attr, missing)) for owner, attr, _ in probes]
    try:
        for owner, attr, name in probes:
            setattr(owner, attr, clock.wrap(name, getattr(owner, attr)))
        yield
    finally:
        for owner, attr, original in reversed(saved):
            if original is missing:
                delattr(owner, attr)
            else:
                setattr(owner, attr, original)


def profile(scenario: Scenario, epochs: int, threads: int, repeats: int) -> str:
    """Markdown table: per-component milliseconds (median of repeats) of three variants."""
    torch.set_num_threads(threads)
    this = sys.modules[__name__]
    common = [*PROBES, (this, "plain_tensor_memory", LOOP_BODY)]
    columns: list[tuple[str, Callable[[], Result], list[tuple[Any, str, str]]]] = [
        ("plain", lambda: this.plain_tensor_memory(scenario, epochs), common),
        (
            "ricordo torch",
            lambda: ricordo_run(scenario, epochs, "torch"),
            common + ricordo_probes(),
        ),
        (
            "ricordo fabric",
            lambda: ricordo_run(scenario, epochs, "fabric"),
            common + ricordo_probes() + fabric_probes(),
        ),
    ]
    runs: dict[str, list[tuple[float, dict[str, float]]]] = {label: [] for label, _, _ in columns}
    calls: dict[str, int] = {}
    for _ in range(repeats):
        for label, run, probes in columns:
            clock = Clock()
            start = time.perf_counter()
            with patched(clock, probes):
                run()
            runs[label].append((time.perf_counter() - start, clock.seconds))
            calls[label] = sum(clock.calls.values())
    names = list(dict.fromkeys(name for _, _, probes in columns for _, _, name in probes))
    medians: dict[str, dict[str, float]] = {}
    for label, values in runs.items():
        parts = {n: median([p.get(n, 0.0) for _, p in values]) for n in names}
        total = median([t for t, _ in values])
        medians[label] = {**parts, REST: total - sum(parts.values()), "total": total}
    rows = []
    for n in [*names, REST, "total"]:
        ms = [1e3 * medians[label][n] for label, _, _ in columns]
        if max(abs(m) for m in ms) < 0.5:
            continue
        rows.append(
            [
                "**total (instrumented)**" if n == "total" else n,
                *(f"{m:.0f}" for m in ms),
                *(f"{m - ms[0]:+.0f}" for m in ms[1:]),
            ]
        )
    headers = ["component (exclusive ms)", *(label for label, _, _ in columns)]
    headers += [f"{label} - plain" for label, _, _ in columns[1:]]
    cost = probe_cost()
    note = ", ".join(
        f"{label} {calls[label]} calls = ~{1e3 * cost * calls[label]:.0f} ms" for label in calls
    )
    return (
        table(headers, rows)
        + f"\nOne probe costs ~{1e6 * cost:.1f} us, charged to its caller; probed calls per run: "
        + note
    )


def probe_cost(calls: int = 20_000) -> float:
    """Seconds one probe adds around a call (a probed no-op minus a plain no-op)."""
    clock = Clock()

    def noop() -> None:
        return None

    probed = clock.wrap("noop", noop)
    start = time.perf_counter()
    for _ in range(calls):
        noop()
    bare = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(calls):
        probed()
    return max(0.0, (time.perf_counter() - start - bare) / calls)


# ------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each variant")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads")
    parser.add_argument("--epochs", type=int, default=20, help="epochs per chunk")
    parser.add_argument("--profile", action="store_true", help="add the component breakdown")
    parser.add_argument("--profile-repeats", type=int, default=3)
    args = parser.parse_args()

    train, test = load_builtin("digits")
    scenario = make_scenario("class-incremental", train, test, updates=CHUNKS, seed=SEED)
    steps = sum(math.ceil(len(c) / BATCH) for c in scenario.train) * args.epochs
    print(machine())
    print(
        f"ER on digits, class-incremental {CHUNKS} chunks, MLP {HIDDEN}, batch {BATCH}+{BATCH}, "
        f"memory {MEMORY}, {args.epochs} epochs/chunk = {steps} steps; median of {args.repeats}\n"
    )
    torch.set_num_threads(1)
    for run in VARIANTS.values():  # warm-up: one-off imports and allocations, untimed
        run(scenario, 1)

    for threads in args.threads:
        times, cpu, results = time_variants(scenario, args.epochs, args.repeats, threads)
        base, base_cpu = median(times[BASELINE]), median(cpu[BASELINE])
        rows = []
        for name, values in times.items():
            same = "-" if name == BASELINE else compare(results[BASELINE], results[name])
            if name == "plain loop, list reservoir":
                same = "n/a (own RNG)"
            rows.append(
                [
                    name,
                    f"{median(values):.3f}",
                    spread(values),
                    f"{median(values) / base:.3f}x",
                    f"{1e3 * median(values) / steps:.2f}",
                    f"{median(cpu[name]) / base_cpu:.3f}x",
                    same,
                ]
            )
        print(f"torch.set_num_threads({threads})")
        print(
            table(
                [
                    "variant",
                    "median s",
                    "min-max s",
                    "vs plain",
                    "ms/step",
                    "CPU time vs plain",
                    "weights vs plain",
                ],
                rows,
            )
        )
        print()

    if args.profile:
        print(f"Profile, 1 thread, median of {args.profile_repeats} instrumented runs")
        print(profile(scenario, args.epochs, 1, args.profile_repeats))


if __name__ == "__main__":
    main()
