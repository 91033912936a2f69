"""What a benchmark suite runs: tasks, protocols, methods, seeds and where the tuned recipes are.

A suite is a YAML or JSON file (``configs/suites/adapters.yaml`` is the project's suite, see
``docs/benchmarks/adapters-suite.md``)::

    seeds: 20                  # test seeds 1..20 (few-shot draws and scored images, shared by every method)
    shots: 16
    eval_per_class: 100        # scored test images per class, drawn with the seed
    reference: MMA             # paired differences are taken to this method
    recipes: benchmarks/results/suite_recipes.json   # tuned lr and epochs per method (trkit-vlm benchmark --tune)
    tasks:                     # named tasks (trkit_vlm.data.tasks.TaskSpec fields)
      contrast: {shift: contrast, params: {strength: 0.6}}
      clean: {}
    base_to_novel: [contrast]  # train on base classes, score base and novel
    transfer:                  # train on all classes of the source, score all classes of each target
      domain-generalisation: {source: clean, targets: [contrast]}
    methods:                   # label -> method (null: zero-shot), adapter and loss fields, fixed optimiser fields
      zero-shot: {method: null}
      MMA: {method: mma, adapter: {hidden: 32}, optim: {name: sgd, batch_size: 16, weight_decay: 0.0005}}
      AdaRing from MMA:        # train MMA (its tuned recipe), compress it to 7,104 parameters, fine-tune that
        method: adaring
        compress: {source: MMA, budget: 7104}
        optim: {name: adamw, batch_size: 16, weight_decay: 0.0005}
    tuning: {seeds: [1001, 1002, 1003], eval_per_class: 50, extend: 3,
             grids: {sgd: {lr: [0.02, 0.05, 0.1], epochs: [10, 20, 40]}}}

An AdaRing variant or ablation is one more entry under ``methods`` (and one ``--tune --method LABEL``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trkit.errors import InputError
from trkit_vlm.data.tasks import TaskSpec
from trkit_vlm.training.config import LossConfig, OptimConfig, RunConfig, read_config_file

__all__ = [
    "MethodEntry",
    "TransferProtocol",
    "TuningConfig",
    "SuiteConfig",
    "load_suite",
    "read_recipes",
    "suite_from_dict",
]

BASE_TO_NOVEL = "base-to-novel"


@dataclass
class MethodEntry:
    """One row of the suite: a registered adapter method with its fields, or zero-shot (``method: null``).

    ``optim`` holds the optimiser fields that are fixed (name, batch size, weight decay, ...); the tuned
    ``lr`` and ``epochs`` come from the recipes file (or from ``optim`` itself when it gives them).
    ``protocols``: the protocols it runs (and is tuned) in, e.g. an ablation on base-to-novel alone;
    None: every protocol of the suite.
    ``compress``: ``{source: LABEL, budget: N}``: each run first trains the suite's MMA method ``LABEL`` (at
    its tuned recipe) on the same draw, compresses it into an AdaRing adapter of at most ``N`` parameters
    (``trkit-vlm compress``), then fine-tunes that with this entry's optimiser and loss. The adapter's fields
    come from the compression, so ``adapter`` stays empty.
    """

    label: str
    method: str | None
    adapter: dict[str, Any] = field(default_factory=dict)
    loss: dict[str, Any] = field(default_factory=dict)
    optim: dict[str, Any] = field(default_factory=dict)
    protocols: list[str] | None = None
    compress: dict[str, Any] | None = None
    compress_source: MethodEntry | None = field(default=None, repr=False)  # the entry ``compress`` names

    @property
    def trains(self) -> bool:
        return self.method is not None

    def runs_in(self, protocol: str) -> bool:
        return self.protocols is None or protocol in self.protocols


@dataclass
class TransferProtocol:
    """Train on every class of ``source``; score every class (``all``, C-way) of ``source`` and each target."""

    name: str
    source: str
    targets: list[str]


@dataclass
class TuningConfig:
    """The one tuning procedure for every method: an ``lr x epochs`` grid per optimiser on validation images.

    A chosen value on the edge of its grid extends the grid that way (``lr`` by the grid's ratio, epochs
    doubled or halved), up to ``extend`` times per axis.
    """

    seeds: list[int] = field(default_factory=lambda: [1001, 1002, 1003])
    # A transfer protocol is scored on one task, base-to-novel on several: its own seeds (None: ``seeds``)
    # can give it as many runs per grid point, and a recipe that fails on some draws shows up.
    transfer_seeds: list[int] | None = None
    eval_per_class: int = 50
    extend: int = 3
    grids: dict[str, dict[str, list]] = field(
        default_factory=lambda: {
            "sgd": {"lr": [0.02, 0.05, 0.1], "epochs": [10, 20, 40]},
            "adamw": {"lr": [3e-4, 1e-3, 3e-3], "epochs": [10, 20, 40]},
        }
    )


@dataclass
class SuiteConfig:
    """A whole suite (see the module docstring). ``seeds`` is the list of test seeds."""

    tasks: dict[str, dict[str, Any]]
    methods: list[MethodEntry]
    base_to_novel: list[str] = field(default_factory=list)
    transfer: list[TransferProtocol] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: list(range(1, 21)))
    shots: int = 16
    eval_per_class: int | None = 100
    reference: str = "MMA"
    recipes: str | None = None  # a relative path in a suite file is relative to that file
    tuning: TuningConfig = field(default_factory=TuningConfig)
    source: str | None = None  # the file it was read from

    def tuning_seeds(self, protocol: str = BASE_TO_NOVEL) -> list[int]:
        """The few-shot draws ``protocol`` is tuned on."""
        if protocol != BASE_TO_NOVEL and self.tuning.transfer_seeds is not None:
            return list(self.tuning.transfer_seeds)
        return list(self.tuning.seeds)

    def method(self, label: str) -> MethodEntry:
        for m in self.methods:
            if m.label == label:
                return m
        raise InputError(f"no method {label!r} in the suite; it has {[m.label for m in self.methods]}")

    def select(self, methods: list[str] | None = None, tasks: list[str] | None = None) -> SuiteConfig:
        """A copy keeping only these method labels and tasks (protocols whose tasks all remain)."""
        import copy

        out = copy.deepcopy(self)
        if methods is not None:
            out.methods = [self.method(m) for m in methods]
        if tasks is not None:
            for t in tasks:
                if t not in self.tasks:
                    raise InputError(f"no task {t!r} in the suite; it has {sorted(self.tasks)}")
            out.base_to_novel = [t for t in self.base_to_novel if t in tasks]
            out.transfer = [
                TransferProtocol(p.name, p.source, [t for t in p.targets if t in tasks])
                for p in self.transfer
                if p.source in tasks and any(t in tasks for t in p.targets)
            ]
        return out

    def load_recipes(self, protocol: str = BASE_TO_NOVEL) -> dict[str, dict[str, Any]]:
        """The tuned recipes of ``protocol`` (label -> optimiser fields), ``{}`` when the suite names no file.

        A transfer protocol trains on every class of its source (twice the steps of base-to-novel), so it
        is tuned on its own (``tune(..., protocol=NAME)``; the file's ``by_protocol``); a method without a
        recipe for it there uses its base-to-novel one (every row records the ``lr`` it ran with).
        """
        if self.recipes is None:
            return {}
        if not Path(self.recipes).is_file():
            raise FileNotFoundError(f"recipes file {self.recipes} not found: run 'trkit-vlm benchmark --tune' first")
        return read_recipes(self.recipes, protocol)

    def optim_for(self, entry: MethodEntry, recipes: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """The full optimiser fields of ``entry``: its fixed ones, then its tuned ``lr`` and ``epochs``."""
        optim = {**entry.optim, **recipes.get(entry.label, {})}
        if "lr" not in optim or "epochs" not in optim:
            raise InputError(
                f"method {entry.label!r} has no tuned recipe (lr, epochs): tune it with "
                f"'trkit-vlm benchmark --tune --method \"{entry.label}\"' or give them under its optim"
            )
        return optim


def read_recipes(path: str | Path, protocol: str = BASE_TO_NOVEL) -> dict[str, dict[str, Any]]:
    """``{label: optimiser fields}`` of ``protocol`` from a recipes file (``{}`` when there is no file yet)."""
    path = Path(path)
    if not path.is_file():
        return {}
    content = json.loads(path.read_text())
    out = {label: r["optim"] for label, r in content["recipes"].items()}
    if protocol != BASE_TO_NOVEL:
        out.update({label: r["optim"] for label, r in content.get("by_protocol", {}).get(protocol, {}).items()})
    return out


def _method_entry(label: str, d: Any) -> MethodEntry:
    if not isinstance(d, dict):
        raise InputError(f"methods.{label} must be a mapping, got {d!r}")
    known = {"method", "adapter", "loss", "optim", "protocols", "compress"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise InputError(f"methods.{label}: unknown key(s) {unknown}; known: {', '.join(sorted(known))}")
    entry = MethodEntry(label, d.get("method"), dict(d.get("adapter") or {}), dict(d.get("loss") or {}))
    entry.optim = dict(d.get("optim") or {})
    protocols = d.get("protocols")
    if protocols is not None:
        if not (isinstance(protocols, list) and protocols and all(isinstance(x, str) for x in protocols)):
            raise InputError(f"methods.{label}.protocols must be a non-empty list of protocol names, got {protocols!r}")
        entry.protocols = list(protocols)
    if d.get("compress") is not None:
        entry.compress = _compress_field(label, entry, d["compress"])
    if entry.method is not None:
        try:  # every field checked as a run would check it (a placeholder lr and epochs when they are tuned)
            RunConfig(
                method=entry.method,
                adapter=entry.adapter,
                optim=OptimConfig(**{"lr": 1.0, "epochs": 1, **entry.optim}),
                loss=LossConfig(**entry.loss),
            ).validate()
        except (InputError, TypeError) as err:
            raise InputError(f"methods.{label}: {err}") from None
    return entry


def _compress_field(label: str, entry: MethodEntry, c: Any) -> dict[str, Any]:
    """``methods.LABEL.compress`` checked on its own (that its source is an MMA method: ``suite_from_dict``)."""
    if not isinstance(c, dict) or set(c) != {"source", "budget"}:
        raise InputError(f"methods.{label}.compress must be {{source: LABEL, budget: N}}, got {c!r}")
    budget = c["budget"]
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise InputError(f"methods.{label}.compress.budget must be a parameter count >= 1, got {budget!r}")
    if entry.method != "adaring" or entry.adapter:
        raise InputError(
            f"methods.{label}: compress gives an adaring adapter whose fields come from the compression; "
            f"set method: adaring and no adapter fields (got method {entry.method!r}, adapter {entry.adapter})"
        )
    return {"source": str(c["source"]), "budget": budget}


def suite_from_dict(d: dict[str, Any], source: str | None = None) -> SuiteConfig:
    """A :class:`SuiteConfig` from its dict form; InputError naming the first bad field."""
    if not isinstance(d, dict):
        raise InputError(f"a suite is a mapping, got {type(d).__name__}")
    known = {"tasks", "methods", "base_to_novel", "transfer", "seeds", "shots", "eval_per_class", "reference"}
    known |= {"recipes", "tuning"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise InputError(f"unknown suite key(s) {unknown}; known: {sorted(known)}")
    tasks = dict(d.get("tasks") or {})
    for name, spec in tasks.items():
        try:
            TaskSpec.from_dict(spec or {})
        except (InputError, TypeError) as err:
            raise InputError(f"tasks.{name}: {err}") from None
        tasks[name] = dict(spec or {})
    methods = [_method_entry(label, m) for label, m in (d.get("methods") or {}).items()]
    if not methods:
        raise InputError("a suite needs at least one method")
    seeds = d.get("seeds", 20)
    seeds = list(range(1, seeds + 1)) if isinstance(seeds, int) else list(seeds)
    transfer = []
    for name, p in (d.get("transfer") or {}).items():
        if not isinstance(p, dict) or set(p) != {"source", "targets"}:
            raise InputError(f"transfer.{name} must be {{source: TASK, targets: [TASK, ...]}}, got {p!r}")
        transfer.append(TransferProtocol(name, p["source"], list(p["targets"])))
    try:
        tuning = TuningConfig(**(d.get("tuning") or {}))
    except TypeError as err:
        raise InputError(f"tuning: {err}") from None
    suite = SuiteConfig(
        tasks=tasks,
        methods=methods,
        base_to_novel=list(d.get("base_to_novel") or []),
        transfer=transfer,
        seeds=seeds,
        shots=int(d.get("shots", 16)),
        eval_per_class=d.get("eval_per_class", 100),
        reference=d.get("reference", "MMA"),
        recipes=d.get("recipes"),
        tuning=tuning,
        source=source,
    )
    used = set(suite.base_to_novel) | {p.source for p in transfer} | {t for p in transfer for t in p.targets}
    missing = sorted(used - set(tasks))
    if missing:
        raise InputError(f"the protocols name task(s) {missing} that are not under tasks ({sorted(tasks)})")
    if BASE_TO_NOVEL in {p.name for p in transfer}:
        raise InputError(f"{BASE_TO_NOVEL!r} is the base-to-novel protocol's name; call the transfer one otherwise")
    names = [BASE_TO_NOVEL, *[p.name for p in transfer]]
    for m in methods:
        bad = sorted(set(m.protocols or []) - set(names))
        if bad:
            raise InputError(f"methods.{m.label}.protocols names {bad}, not protocols of the suite ({names})")
        if m.compress is not None:
            source = next((s for s in methods if s.label == m.compress["source"]), None)
            if source is None or source.method != "mma" or source.compress is not None:
                raise InputError(
                    f"methods.{m.label}.compress.source must name an MMA method of the suite, got "
                    f"{m.compress['source']!r} ({'not in the suite' if source is None else source.method})"
                )
            m.compress_source = source  # kept when a selection drops the source's own row
    tuning_seeds = set(suite.tuning.seeds) | set(suite.tuning.transfer_seeds or [])
    if not seeds or tuning_seeds & set(seeds):
        raise InputError(
            f"test seeds {seeds} must be non-empty and disjoint from the tuning seeds {sorted(tuning_seeds)}"
        )
    return suite


def load_suite(path: str | Path) -> SuiteConfig:
    """Read a suite from a ``.yaml``/``.yml`` or ``.json`` file."""
    path = Path(path)
    d = read_config_file(path, "suite")
    suite = suite_from_dict(d, source=str(path))
    if suite.recipes is not None and not Path(suite.recipes).is_absolute():
        suite.recipes = os.path.relpath(path.parent / suite.recipes)
    return suite
