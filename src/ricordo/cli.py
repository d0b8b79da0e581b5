"""The ``ricordo`` command: a thin layer over the Python API (same option names as UpdateConfig).

Errors print one line ``ricordo: error: ...`` and exit 1 (usage errors exit 2); ``--debug`` shows
the traceback instead. ``ricordo update --gate`` exits 3 when the gate refuses the update,
``ricordo shift`` exits 4 when it detects a shift.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from ricordo import __version__
from ricordo.errors import ConfigError, RicordoError, UpdateRejectedError

# Exit status of `ricordo update --gate` when the gate refuses the update (errors exit 1, usage
# errors 2): a pipeline branches on it, e.g. to alert and keep serving the current state.
GATE_REFUSED = 3
# Exit status of `ricordo shift` when it detects a shift (0: none): a pipeline branches on it,
# e.g. to run an update only when the data moved.
SHIFT_DETECTED = 4

# Commands whose UpdateConfig options default to None ("not given"), and where such an option's
# value then comes from: the note their help ends with.
_INHERITED_DEFAULTS = {
    "update": "An option not given takes the value stored in --state, else the default shown.",
    "benchmark": "An option not given takes the -c file's value, else the default shown.",
}


class _Help:
    """Help that shows how to type each option and what it is when not given.

    Typer's rich help prints a type after every option, flags included (``--version <bool>``,
    ``--overwrite --no-overwrite <bool>``): flags get none here, and repeatable options declare
    their element (``metavar="K=V"``). The UpdateConfig options of ``update`` and ``benchmark``
    default to None, so that an option not given takes the state's (or the experiment file's)
    value; Typer then shows no default, so their help gets UpdateConfig's, which cannot drift.
    """

    name: str | None
    params: list[Any]

    epilog: str | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperOption):
                _tidy_option(param, self.name or "")
            elif isinstance(param, TyperArgument) and param.metavar is None and param.name:
                param.metavar = param.name.upper()  # usage "ricordo info STATE", not "{state}"
        if self.name in _INHERITED_DEFAULTS and not self.epilog:
            self.epilog = _INHERITED_DEFAULTS[self.name]

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option


class _Group(_Help, TyperGroup):
    pass


class _Command(_Help, TyperCommand):
    pass


class _App(typer.Typer):
    """``typer.Typer`` whose commands render their help with :class:`_Help`."""

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)


def _tidy_option(option: TyperOption, command: str) -> None:
    if option.is_flag:
        option.metavar = ""
    if command not in _INHERITED_DEFAULTS or option.default is not None or not option.help:
        return
    from ricordo.config import UpdateConfig

    field = UpdateConfig.__dataclass_fields__.get(option.name or "")
    value = getattr(field, "default", None)
    if value is None or "default" in option.help.lower():  # none to show, or said already
        return
    if isinstance(value, bool):
        shown = (option.opts if value else option.secondary_opts)[0]
    elif isinstance(value, tuple):
        shown = ",".join(map(str, value))
    else:
        shown = str(value)
    # "\[": a literal bracket in rich markup, as Typer prints its own defaults.
    option.help = f"{option.help} \\[default: {shown}]"


app = _App(
    name="ricordo",
    help="Continual learning for PyTorch models: update jobs with safe, versioned state.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Group,
)

# Options shared by `update` and `benchmark`. None means "not given": the stored value (for a
# later update) or UpdateConfig's default is used.
Model = Annotated[
    str | None,
    typer.Option(
        help="Built-in model (mlp, cnn, resnet18), or your code like --config: file.py with "
        "model_fn, or module:function."
    ),
]
Hidden = Annotated[
    str | None, typer.Option(help="Hidden sizes (mlp) or channels (cnn), e.g. 256,128.")
]
ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Your model: a Python file defining model_fn(**kwargs), or an importable "
        "module:function. With --state: the code the state was trained with (a state never "
        "runs code; its sha256 must match).",
    ),
]
StateModelCode = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="The model code the state was trained with (.py file or module:function), needed "
        "when its model is your own code: a state never runs code; its sha256 must match.",
    ),
]
AcceptModelChange = Annotated[
    bool,
    typer.Option(
        "--accept-model-change",
        help="Use --config even though its sha256 differs from the one the state recorded.",
    ),
]
ModelOption = Annotated[
    list[str] | None,
    typer.Option("--model-option", metavar="K=V", help="Passed to model_fn; repeat."),
]
Param = Annotated[
    list[str] | None, typer.Option("--param", metavar="K=V", help="Method parameter; repeat.")
]
MemorySize = Annotated[int | None, typer.Option(help="Rehearsal memory capacity.")]
MemoryPolicy = Annotated[
    str | None,
    typer.Option(
        help="Memory policy: reservoir, class-balanced, sliding-window, herding or "
        "gradient-matching."
    ),
]
MemoryOption = Annotated[
    list[str] | None,
    typer.Option(
        "--memory-option",
        metavar="K=V",
        help="Memory policy option, e.g. initialisations=5 (gradient-matching); repeat.",
    ),
]
MemoryStorage = Annotated[
    str | None, typer.Option(help="Memory storage: ram, or mmap (files; larger than RAM).")
]
MemoryDir = Annotated[
    str | None, typer.Option(help="Folder for an mmap memory's files (default: temp folder).")
]
MemoryInsert = Annotated[
    str | None,
    typer.Option(
        help="When rows enter the memory: every-epoch (default, as Mammoth) or once per update "
        "(a uniform sample of the distinct rows)."
    ),
]
MaskUnseen = Annotated[
    bool | None,
    typer.Option(
        "--mask-unseen/--no-mask-unseen",
        help="While training, mask the logits of classes in neither the chunk nor the memory.",
    ),
]
SelectiveBackpropOption = Annotated[
    str | None,
    typer.Option(
        "--selective-backprop",
        help="Forward each new batch without gradients and train on --keep-fraction of its rows, "
        "chosen by loss (highest), gradient-matching (a weighted subset matching the batch's "
        "mean last-layer gradient) or random (default: every row).",
    ),
]
KeepFraction = Annotated[
    float | None,
    typer.Option(help="Share of each new batch --selective-backprop keeps, rounded up."),
]
MaxClasses = Annotated[
    int | None, typer.Option(help="Most classes a growing head may reach (no --num-classes).")
]
NumClasses = Annotated[
    int | None,
    typer.Option(
        metavar="N",
        help="Known number of classes (labels 0..N-1): the output layer has N columns from the "
        "start and never grows (default: it grows with the labels seen).",
    ),
]
Optimizer = Annotated[
    str | None,
    typer.Option(help="sgd, momentum, adam, adamw, signsgd, signum, svag or m-svag."),
]
Lr = Annotated[float | None, typer.Option(help="Learning rate.")]
Momentum = Annotated[
    float | None,
    typer.Option(help="SGD momentum; the beta of momentum, signum and m-svag (0: their 0.9)."),
]
WeightDecay = Annotated[float | None, typer.Option(help="Weight decay.")]
BatchSize = Annotated[int | None, typer.Option(help="New-data rows per step.")]
BatchSizeSchedule = Annotated[
    str | None,
    typer.Option(
        help="fixed (--batch-size rows every step) or cabs (each step's rows from the gradient "
        "variance and the loss, coupled to --lr; plain SGD only)."
    ),
]
CabsMinBatch = Annotated[int | None, typer.Option(help="CABS: fewest rows per step (16).")]
CabsMaxBatch = Annotated[int | None, typer.Option(help="CABS: most rows per step (2048).")]
CabsSmoothing = Annotated[
    float | None, typer.Option(help="CABS: running averages' weight on the past (0.95).")
]
Epochs = Annotated[int | None, typer.Option(help="Passes over the chunk.")]
ValFraction = Annotated[float | None, typer.Option(help="Hold out this fraction to validate.")]
Patience = Annotated[
    int | None,
    typer.Option(
        help="Stop after N epochs without improvement (default: off; needs --val-fraction)."
    ),
]
EarlyStoppingOption = Annotated[
    str | None,
    typer.Option(
        help="validation (--patience on --val-fraction), eb (the EB criterion from the training "
        "batches' per-example gradients: no rows held out) or none (default: validation when "
        "--patience is given, else none)."
    ),
]
EbEvery = Annotated[int | None, typer.Option(help="EB criterion: evaluate every N steps (1).")]
EbLayers = Annotated[
    str | None,
    typer.Option(help="EB criterion on all trainable parameters or the last (output) layer."),
]
EbSmoothing = Annotated[
    float | None,
    typer.Option(help="EB criterion: EMA weight on the newest value (0.2; 1: none)."),
]
EbEpsilon = Annotated[
    float | None,
    typer.Option(help="EB criterion: added to each gradient variance (0: paper; 1e-5: cockpit)."),
]
Seed = Annotated[int | None, typer.Option(help="Seed of every random choice.")]
Holdout = Annotated[
    float | None,
    typer.Option(
        help="Keep this share of each chunk as held-out rows in the state, never trained on "
        "(what --gate compares on; 0: none)."
    ),
]
HoldoutMax = Annotated[int | None, typer.Option(help="At most this many held-out rows per chunk.")]
Backend = Annotated[str | None, typer.Option(help="auto, torch or fabric.")]
Accelerator = Annotated[str | None, typer.Option(help="auto, cpu, cuda, mps.")]
Devices = Annotated[int | None, typer.Option(help="Devices per update.")]
Precision = Annotated[str | None, typer.Option(help="32-true, bf16-mixed, 16-mixed, ...")]
Strategy = Annotated[
    str | None,
    typer.Option(
        help="Fabric strategy; ddp: data-parallel processes (--devices per node, --num-nodes)."
    ),
]
NumNodes = Annotated[
    int | None, typer.Option(help="Machines of a --strategy ddp update (torchrun or SLURM).")
]
Threads = Annotated[
    int | None,
    typer.Option(
        help="CPU threads for training (default: auto: 1 for a small model, i.e. a step under "
        "20 M multiply-adds; else one per idle core, at most torch's default)."
    ),
]
ShowProgress = Annotated[
    bool | None,
    typer.Option(
        "--progress/--no-progress",
        help="Progress: a bar on a terminal, else (cron, SLURM, CI) one line per epoch on stderr.",
    ),
]
LoggerOption = Annotated[
    list[str] | None,
    typer.Option(
        "--logger",
        metavar="KIND[:WHERE]",
        help="Log per-step loss and per-epoch summaries: csv[:DIR] (built in), "
        "tensorboard[:DIR], mlflow[:EXPERIMENT], wandb[:PROJECT] (when installed); DIR "
        "default: ./ricordo-logs, one new folder update-K per update. Repeat or comma-separate. "
        "Not taken from --state.",
    ),
]
Augment = Annotated[
    str | None,
    typer.Option(
        help="Training augmentation, e.g. crop:4,flip (batched, on device; per sample in the "
        "DataLoader with --lazy)."
    ),
]
DataWorkers = Annotated[
    int | None,
    typer.Option(
        metavar="N",
        help="DataLoader processes reading a --lazy chunk (default 0: the training process).",
    ),
]
Lazy = Annotated[
    bool,
    typer.Option(
        help="Read the chunk sample by sample through a DataLoader instead of into memory: a "
        ".npz (uncompressed) or --dataset image-folder/hf; for data larger than RAM."
    ),
]
Backbone = Annotated[
    str | None,
    typer.Option(
        metavar="NAME_OR_PATH",
        help="Pretrained Hugging Face encoder (hub name or local folder; BERT-like text or ViT) "
        "whose CLS feature feeds the linear head, frozen; needed for text chunks (.npz with "
        "'text'). With --state: where that backbone is (its sha256 must match).",
    ),
]
StateBackbone = Annotated[
    str | None,
    typer.Option(
        metavar="NAME_OR_PATH",
        help="Where the state's pretrained backbone is, if not at the recorded name or folder "
        "(its sha256 must match, or add --accept-model-change).",
    ),
]
MaxLength = Annotated[
    int | None, typer.Option(help="Tokens per text with a text --backbone (default 128).")
]
TrainBackbone = Annotated[
    bool | None,
    typer.Option(
        "--train-backbone/--frozen-backbone",
        help="Train the --backbone's weights too (then saved in the state); default: frozen.",
    ),
]
DataDir = Annotated[
    str | None, typer.Option(help="Folder with dataset files ($RICORDO_DATA by default).")
]
Download = Annotated[bool, typer.Option(help="Download missing dataset files (checksummed).")]
DatasetOption = Annotated[
    list[str] | None,
    typer.Option("--dataset-option", metavar="K=V", help="Dataset option; repeat."),
]
ScenarioOption = Annotated[
    list[str] | None,
    typer.Option(
        "--scenario-option", metavar="K=V", help="Scenario option, e.g. blurry=0.2; repeat."
    ),
]
Target = Annotated[str | None, typer.Option(help="Label column of a CSV/Parquet file.")]


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    if version:
        typer.echo(f"ricordo {__version__}")
        raise typer.Exit()


def _pairs(values: list[str] | None, flag: str) -> dict[str, Any]:
    """Parse repeated ``k=v`` options; numbers stay strings until the method converts them."""
    result: dict[str, Any] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {item!r} is not key=value; write e.g. {flag} alpha=0.5")
        result[key.strip().replace("-", "_")] = _literal(value.strip())
    return result


def _literal(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _config_options(given: dict[str, Any]) -> dict[str, Any]:
    """The UpdateConfig fields among a command's parameters (CLI names equal field names)."""
    from ricordo.config import field_names

    values = {k: given[k] for k in field_names() if k in given}
    values["model_options"] = _pairs(given.get("model_option"), "--model-option")
    values["memory_options"] = _pairs(given.get("memory_option"), "--memory-option")
    values["params"] = _pairs(given.get("param"), "--param")
    return _options(**values)


def _options(**given: Any) -> dict[str, Any]:
    """The UpdateConfig fields the user actually passed."""
    options = {k: v for k, v in given.items() if v is not None}
    if "hidden" in options:
        try:
            options["hidden"] = tuple(int(h) for h in str(options["hidden"]).split(",") if h)
        except ValueError:
            raise ConfigError(
                f"--hidden {given['hidden']!r} must be comma-separated integers, e.g. 256,128"
            ) from None
    model = str(options.get("model", ""))
    if model.endswith(".py") or ":" in model:
        # --model my_model.py / pkg.mod:make_model names the user's code, like --config does.
        if "config" in options:
            raise ConfigError(
                f"--model {model} and --config {options['config']} both name model code; "
                "pass one of them"
            )
        options["config"] = options.pop("model")
    if "config" in options:
        # A file is resolved (benchmark runs may start elsewhere); module:function stays as is.
        path = Path(options["config"]).expanduser()
        options["config"] = str(path.resolve()) if path.is_file() else str(options["config"])
    for key in ("params", "model_options", "memory_options"):
        if key in options and not options[key]:
            del options[key]
    return options


def _persistent(url: str, flag: str) -> None:
    """Refuse a state on a filesystem that lives only in this process (``memory://``): it would
    vanish when the command exits. Python keeps them (tests, notebooks)."""
    from ricordo.state.fs import resolve

    if resolve(url).is_process_local:
        raise ConfigError(
            f"{flag} {url} is on a filesystem that lives only inside this ricordo process and "
            "vanishes when it exits; use a local path or a persistent URL such as s3://..."
        )


def _model_code(
    config: Path | str | None, accept_model_change: bool, backbone: str | None = None
) -> str | None:
    """The --config given to a command that loads a state (None: none given)."""
    if accept_model_change and config is None and backbone is None:
        raise ConfigError(
            "--accept-model-change needs --config or --backbone: the model code or backbone "
            "to use instead of the state's"
        )
    return None if config is None else str(config)


def _check_output(output: Path, *, data: str, overwrite: bool) -> None:
    """Before any work: an --output never replaces the input data or a file inside a state,
    and replaces another existing file only with --overwrite."""
    import os

    from ricordo.state import enclosing_state

    real = os.path.realpath(output)  # links resolved: a link into a state is inside it
    if os.path.exists(data) and real == os.path.realpath(data):
        raise ConfigError(f"--output {output} is the input --data file; write to another file")
    outer = enclosing_state(real)
    if outer is not None:
        raise ConfigError(
            f"--output {output} is inside the state at {outer}, which holds only the files its "
            "manifest lists; write outside it"
        )
    if os.path.isdir(real):
        raise ConfigError(f"--output {output} is a folder; name a file")
    if os.path.lexists(output) and not overwrite:
        raise ConfigError(
            f"--output {output} already exists; pass --overwrite to replace it or choose "
            "another file"
        )


@app.command()
def data(
    dataset: Annotated[
        str, typer.Argument(help="Built-in dataset (e.g. digits) or a training file (.npz/.csv).")
    ],
    out: Annotated[Path, typer.Option(help="Folder for train-K/test-K/test-all.npz.")],
    scenario: Annotated[str, typer.Option(help="How to cut it into chunks.")] = (
        "class-incremental"
    ),
    updates: Annotated[int, typer.Option(help="Number of chunks.")] = 5,
    seed: Annotated[
        int, typer.Option(help="Seed of the scenario (class order, splits, permutations).")
    ] = 0,
    scenario_option: ScenarioOption = None,
    data_dir: DataDir = None,
    download: Download = False,
    dataset_option: DatasetOption = None,
    test_data: Annotated[
        str | None, typer.Option(help="Test file, when DATASET is a training file.")
    ] = None,
    target: Target = None,
    group_column: Annotated[
        str | None, typer.Option(help="Column of a table that groups samples (grouped scenario).")
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(help="Replace an earlier export in --out (only the files it wrote)."),
    ] = False,
) -> None:
    """Cut a dataset into chunks and write them as .npz files (train-K, test-K, test-all).

    DATASET is a built-in name, or your own training file with --test-data (CSV/Parquet need
    --target; --group-column feeds the grouped / time-incremental scenario). --out must be new
    or empty; --overwrite replaces an earlier export there and refuses any other file.
    """
    from ricordo.data import export_scenario, load_builtin, load_data, make_scenario
    from ricordo.data.export import check_export_target

    from_file = Path(dataset).suffix.lower() in (".npz", ".csv", ".parquet")
    if from_file and test_data is None:
        raise ConfigError(f"{dataset} is a training file; pass its test file with --test-data")
    if not from_file and (test_data or target or group_column):
        raise ConfigError(
            f"--test-data/--target/--group-column apply to files, not the dataset {dataset!r}"
        )
    check_export_target(out, overwrite=overwrite)  # before loading and cutting the data
    if from_file:
        train = load_data(dataset, target=target, group_column=group_column, name=dataset)
        test = load_data(test_data, target=target, group_column=group_column, name=test_data)
    else:
        train, test = load_builtin(
            dataset,
            root=data_dir,
            download=download,
            **_pairs(dataset_option, "--dataset-option"),
        )
    split = make_scenario(
        scenario,
        train,
        test,
        updates=updates,
        seed=seed,
        data_name=dataset,
        options=_pairs(scenario_option, "--scenario-option"),
    )
    export_scenario(split, out, overwrite=overwrite)
    for k, classes in enumerate(split.chunk_classes):
        typer.echo(
            f"chunk {k}: classes {classes}, {len(split.train[k])} train / "
            f"{len(split.test[k])} test -> {out}/train-{k}.npz"
        )


@app.command()
def update(
    data: Annotated[
        str,
        typer.Option(
            help="Chunk to learn: .npz (x, y), .csv or .parquet; a folder with --dataset."
        ),
    ],
    next_state: Annotated[str, typer.Option(help="Where to write the new state (path or URL).")],
    state: Annotated[str | None, typer.Option(help="State to continue from.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --next-state.")] = False,
    target: Target = None,
    model: Model = None,
    hidden: Hidden = None,
    config: ConfigFile = None,
    accept_model_change: AcceptModelChange = False,
    model_option: ModelOption = None,
    method: Annotated[str | None, typer.Option(help="CL method, e.g. er.")] = None,
    param: Param = None,
    memory_size: MemorySize = None,
    memory_policy: MemoryPolicy = None,
    memory_option: MemoryOption = None,
    memory_storage: MemoryStorage = None,
    memory_dir: MemoryDir = None,
    memory_insert: MemoryInsert = None,
    mask_unseen: MaskUnseen = None,
    selective_backprop: SelectiveBackpropOption = None,
    keep_fraction: KeepFraction = None,
    max_classes: MaxClasses = None,
    num_classes: NumClasses = None,
    optimizer: Optimizer = None,
    lr: Lr = None,
    momentum: Momentum = None,
    weight_decay: WeightDecay = None,
    batch_size: BatchSize = None,
    batch_size_schedule: BatchSizeSchedule = None,
    cabs_min_batch: CabsMinBatch = None,
    cabs_max_batch: CabsMaxBatch = None,
    cabs_smoothing: CabsSmoothing = None,
    epochs: Epochs = None,
    val_fraction: ValFraction = None,
    patience: Patience = None,
    early_stopping: EarlyStoppingOption = None,
    eb_every: EbEvery = None,
    eb_layers: EbLayers = None,
    eb_smoothing: EbSmoothing = None,
    eb_epsilon: EbEpsilon = None,
    seed: Seed = None,
    backend: Backend = None,
    accelerator: Accelerator = None,
    devices: Devices = None,
    precision: Precision = None,
    strategy: Strategy = None,
    num_nodes: NumNodes = None,
    threads: Threads = None,
    augment: Augment = None,
    progress: ShowProgress = None,
    logger: LoggerOption = None,
    dataset: Annotated[
        str | None,
        typer.Option(help="--data is a folder of this dataset: image-folder or hf (saved)."),
    ] = None,
    dataset_option: DatasetOption = None,
    lazy: Lazy = False,
    data_workers: DataWorkers = None,
    backbone: Backbone = None,
    max_length: MaxLength = None,
    train_backbone: TrainBackbone = None,
    holdout: Holdout = None,
    holdout_max: HoldoutMax = None,
    gate: Annotated[
        bool,
        typer.Option(
            help="Refuse to write --next-state when accuracy on the held-out rows of earlier "
            f"updates (or --gate-data) drops by more than --max-regression (exit {GATE_REFUSED})."
        ),
    ] = False,
    max_regression: Annotated[
        float | None,
        typer.Option(help="Largest accuracy drop --gate accepts (default 0.02: two points)."),
    ] = None,
    gate_data: Annotated[
        str | None,
        typer.Option(help="Labelled rows --gate compares on instead of the held-out rows."),
    ] = None,
    rejected_state: Annotated[
        str | None,
        typer.Option(
            help="Where --gate writes a refused candidate (default NEXT_STATE.rejected-TIME)."
        ),
    ] = None,
) -> None:
    """Update a model on one chunk and write the next state (one job per chunk)."""
    from ricordo.config import UpdateConfig
    from ricordo.data import load_data
    from ricordo.state import check_writable
    from ricordo.state.fs import same_location
    from ricordo.updater import Updater

    options = _config_options(locals())
    for flag, value in (
        ("--max-regression", max_regression),
        ("--gate-data", gate_data),
        ("--rejected-state", rejected_state),
    ):
        if value is not None and not gate:
            raise ConfigError(f"{flag} applies to a gated update; add --gate")
    # Fail before training, not after it, when the result could not be written.
    _persistent(next_state, "--next-state")
    if state is not None:
        _persistent(state, "--state")
        if same_location(state, next_state):
            raise ConfigError(
                f"--next-state {next_state} is --state {state}: the new state must not replace "
                "its own parent; write it to a new path"
            )
    elif accept_model_change:
        raise ConfigError("--accept-model-change applies when continuing a --state")
    check_writable(next_state, overwrite=overwrite)
    if gate:
        rejected_state = rejected_state or _rejected_name(next_state)
        _persistent(rejected_state, "--rejected-state")
        if same_location(rejected_state, next_state):
            raise ConfigError(
                f"--rejected-state {rejected_state} is --next-state: a refused candidate is never "
                "written where the next state goes; choose another path"
            )
        check_writable(rejected_state)
    from ricordo.engine.loggers import check_outside_states

    check_outside_states(logger, {"--next-state": next_state, "--state": state})
    folder = dataset is not None or lazy
    if folder and target is not None:
        raise ConfigError(
            "--target names a CSV/Parquet label column; drop it with --dataset/--lazy"
        )
    if dataset_option and dataset is None:
        raise ConfigError("--dataset-option needs --dataset image-folder or hf")

    def chunk_of(columns: list[str] | None) -> Any:
        if folder:
            from ricordo.data.lazy_sources import open_chunk

            options_ = _pairs(dataset_option, "--dataset-option")
            return open_chunk(data, dataset, options_, lazy=lazy)
        return load_data(
            data, target=target, name=data, columns=columns, tokenize=updater.tokenizer
        )

    if state is None:
        updater = Updater(UpdateConfig(**options))
        columns = None
    else:
        # --config names the code the state was trained with (checked by hash), not a change.
        where = options.pop("backbone", None)  # the state's backbone, checked by hash
        code = _model_code(options.pop("config", None), accept_model_change, where)
        updater = Updater.load(
            state, model=code, backbone=where, accept_model_change=accept_model_change
        )
        # A state trained on a table reads the chunk's columns by name (others are ignored).
        columns = updater.feature_names
    the_gate = None
    if gate:
        from ricordo.gate import DEFAULT_MAX_REGRESSION, Gate

        rows = None
        if gate_data is not None:
            rows = load_data(
                gate_data,
                target=target,
                name=gate_data,
                columns=columns,
                tokenize=updater.tokenizer,
            )
        limit = DEFAULT_MAX_REGRESSION if max_regression is None else max_regression
        the_gate = Gate(max_regression=limit, data=rows)
    try:
        if state is None:
            record = updater.update(chunk_of(None), gate=the_gate)
        else:
            record = updater.update(chunk_of(columns), gate=the_gate, **options)
    except UpdateRejectedError as refused:
        _keep_refused(refused, rejected_state, next_state, state)
    updater.save(next_state, overwrite=overwrite)
    from ricordo.engine.distributed import is_writer

    if not is_writer():  # --strategy ddp: rank 0 wrote the state and reports it
        return
    train = record["train"]
    held = record["data"].get("held_out")
    typer.echo(
        f"update {record['update']} ({updater.config.method}): {record['data']['samples']} samples"
        + (f" ({held} more held out)" if held else "")
        + f", classes {record['data']['classes']}, {train['steps']} steps in "
        f"{train['seconds']:.2f} s, final loss {train['final_loss']:.4f}"
        + _selective_note(train.get("selective_backprop"))
        + f" -> {next_state}"
    )
    if "gate" in record:
        typer.echo(_gate_line(record["gate"]))


def _selective_note(counts: dict[str, Any] | None) -> str:
    """The update line's account of --selective-backprop (empty without it)."""
    if not counts:
        return ""
    saved = counts["estimated_saved_flops_fraction"]
    return (
        f", selective backprop {counts['strategy']}: {counts['kept_rows']} of "
        f"{counts['seen_rows']} new rows back-propagated, {counts['forward_only_rows']} "
        f"forwarded to choose them (~{100 * saved:.0f}% of their training compute saved)"
    )


def _rejected_name(next_state: str) -> str:
    """Where a refused candidate goes by default: beside --next-state, stamped with the time."""
    from datetime import datetime, timezone

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{next_state.rstrip('/')}.rejected-{stamp}"


def _gate_line(gate: dict[str, Any]) -> str:
    from ricordo.gate import GateResult

    return GateResult(**gate).summary()


def _keep_refused(
    refused: Any, rejected_state: str | None, next_state: str, state: str | None
) -> None:
    """Write the refused candidate aside, say so in one line and exit with GATE_REFUSED."""
    assert rejected_state is not None and state is not None  # a first update always passes
    refused.candidate.save(rejected_state)
    print(
        f"ricordo: update refused by the gate: {refused.result.details()}; --next-state "
        f"{next_state} was not written; the candidate is at {rejected_state} (compare: "
        f"ricordo diff {state} {rejected_state})",
        file=sys.stderr,
    )
    raise typer.Exit(GATE_REFUSED)


@app.command()
def tune(
    data: Annotated[str, typer.Option(help="Chunk to learn: .npz (x, y), .csv or .parquet.")],
    next_state: Annotated[
        str, typer.Option(help="Where to write the best configuration's state (path or URL).")
    ],
    space: Annotated[
        Path,
        typer.Option(
            help="Search space (YAML): option: {choice|uniform|loguniform|randint: [...]} or a "
            "fixed value; method parameters as params.NAME. See examples/tune_space.yaml."
        ),
    ],
    state: Annotated[str | None, typer.Option(help="State to continue from.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --next-state.")] = False,
    scheduler: Annotated[
        str,
        typer.Option(
            help="random, grid (every combination of the choices once), asha or pasha "
            "(paused trials resume from their last epoch's checkpoint)."
        ),
    ] = "asha",
    trials: Annotated[int, typer.Option(help="Configurations to try (not for grid).")] = 8,
    max_epochs: Annotated[
        int, typer.Option(help="Most epochs per trial: the resource the schedulers share out.")
    ] = 10,
    max_time: Annotated[
        float | None, typer.Option(help="Seconds for all trials (default: no limit).")
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster to run the trials on (default: an embedded Ray on this machine's "
            "cores)."
        ),
    ] = None,
    tune_holdout: Annotated[
        float,
        typer.Option(
            help="Fraction of the chunk and of the memory set aside to score trials (never "
            "trained on by a trial)."
        ),
    ] = 0.2,
    threads_per_trial: Annotated[
        int, typer.Option(help="CPU threads (and Ray CPUs) per trial.")
    ] = 1,
    trials_dir: Annotated[
        str | None,
        typer.Option(
            "--trials-dir",
            "--storage",
            metavar="DIR|URL",
            help="Keep the trials' checkpoints and results here: a folder or any fsspec URL "
            "(s3://..., gs://...); default: a temporary folder, removed. On a cluster with nodes "
            "on other machines: storage every node reaches (required there).",
        ),
    ] = None,
    target: Target = None,
    model: Model = None,
    hidden: Hidden = None,
    config: ConfigFile = None,
    accept_model_change: AcceptModelChange = False,
    model_option: ModelOption = None,
    method: Annotated[str | None, typer.Option(help="CL method, e.g. er.")] = None,
    param: Param = None,
    memory_size: MemorySize = None,
    memory_policy: MemoryPolicy = None,
    memory_option: MemoryOption = None,
    memory_storage: MemoryStorage = None,
    memory_dir: MemoryDir = None,
    memory_insert: MemoryInsert = None,
    mask_unseen: MaskUnseen = None,
    selective_backprop: SelectiveBackpropOption = None,
    keep_fraction: KeepFraction = None,
    max_classes: MaxClasses = None,
    num_classes: NumClasses = None,
    optimizer: Optimizer = None,
    lr: Lr = None,
    momentum: Momentum = None,
    weight_decay: WeightDecay = None,
    batch_size: BatchSize = None,
    seed: Seed = None,
    threads: Threads = None,
    augment: Augment = None,
    progress: ShowProgress = None,
    backbone: Backbone = None,
    max_length: MaxLength = None,
    train_backbone: TrainBackbone = None,
) -> None:
    """Tune an update's hyperparameters (Ray Tune) and write the best configuration's state."""
    from ricordo.data import load_data
    from ricordo.state import check_writable
    from ricordo.state.fs import same_location
    from ricordo.tune import tune as run_tune

    options = _config_options(locals())
    _persistent(next_state, "--next-state")
    if state is not None:
        _persistent(state, "--state")
        if same_location(state, next_state):
            raise ConfigError(
                f"--next-state {next_state} is --state {state}: the new state must not replace "
                "its own parent; write it to a new path"
            )
    elif accept_model_change:
        raise ConfigError("--accept-model-change applies when continuing a --state")
    check_writable(next_state, overwrite=overwrite)
    where = options.pop("backbone", None) if state is not None else None
    code = options.pop("config", None)
    if state is not None:
        code = _model_code(code, accept_model_change, where)
    chunk = load_data(data, target=target, name=data) if target is not None else data
    result = run_tune(
        chunk,
        space=space,
        state=state,
        next_state=next_state,
        scheduler=scheduler,
        trials=trials,
        max_epochs=max_epochs,
        max_time=max_time,
        ray_address=ray_address,
        tune_holdout=tune_holdout,
        threads_per_trial=threads_per_trial,
        trials_dir=trials_dir,
        overwrite=overwrite,
        model_code=code,
        backbone=where,
        accept_model_change=accept_model_change,
        **options,
    )
    best = result.best
    shown = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.config.items()
    )
    typer.echo(
        f"tuned update {result.updater.history[-1]['update']} "
        f"({result.updater.config.method}, {scheduler}): {len(result.trials)} trials; best "
        f"{shown}, {best.epochs} epoch(s), accuracy {best.metric:.4f} on held-out rows "
        f"-> {next_state}"
    )


@app.command()
def evaluate(
    state: Annotated[str, typer.Option(help="State to evaluate.")],
    data: Annotated[str, typer.Option(help="Labelled data: .npz, .csv or .parquet.")],
    target: Target = None,
    output: Annotated[Path | None, typer.Option(help="Write the metrics as JSON.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --output file.")] = False,
    config: StateModelCode = None,
    accept_model_change: AcceptModelChange = False,
    backbone: StateBackbone = None,
    task: Annotated[
        int | None,
        typer.Option(
            help="The update (task, from 0) the data comes from: methods that route rows to "
            "task experts (s-prompts, s-lora, color) also report the share routed to it; "
            "pool methods (l2p, l2l) the share whose selected entries that update used most."
        ),
    ] = None,
) -> None:
    """Print accuracy and loss of a state on labelled data."""
    from ricordo.data import load_data
    from ricordo.updater import Updater

    _persistent(state, "--state")
    if output is not None:
        _check_output(output, data=data, overwrite=overwrite)
    code = _model_code(config, accept_model_change, backbone)
    updater = Updater.load(
        state, model=code, backbone=backbone, accept_model_change=accept_model_change
    )
    chunk = load_data(
        data,
        target=target,
        name=data,
        columns=updater.feature_names,
        tokenize=updater.tokenizer,
    )
    result = {"state": state, "data": data, **updater.evaluate(chunk, task=task)}
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        # Strict JSON: a loss that cannot be computed (no label has an output yet) is null.
        finite = {k: (None if isinstance(v, float) and v != v else v) for k, v in result.items()}
        output.write_text(json.dumps(finite, indent=1, allow_nan=False) + "\n")
    unseen = result["unseen_label_rows"]  # samples = loss_samples + unseen_label_rows
    typer.echo(
        f"accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}  ({result['samples']} "
        + (
            f"samples, {unseen} of classes the model has never seen: counted as wrong, left "
            f"out of the loss over the other {result['loss_samples']})"
            if unseen
            else "samples)"
        )
        + (
            f"  task identification {result['task_id_accuracy']:.4f}"
            if "task_id_accuracy" in result
            else ""
        )
    )


@app.command()
def predict(
    state: Annotated[str, typer.Option(help="State to predict with.")],
    data: Annotated[str, typer.Option(help="Inputs: .npy, .npz (x), .csv or .parquet.")],
    output: Annotated[Path, typer.Option(help="Where to write predictions (.npy).")],
    target: Target = None,
    probabilities: Annotated[
        bool, typer.Option(help="Write class probabilities instead of class ids.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --output file.")] = False,
    config: StateModelCode = None,
    accept_model_change: AcceptModelChange = False,
    backbone: StateBackbone = None,
) -> None:
    """Write predicted class ids (or probabilities) for new inputs as .npy."""
    import numpy as np

    from ricordo.data.loaders import load_features
    from ricordo.updater import Updater

    _persistent(state, "--state")
    _check_output(output, data=data, overwrite=overwrite)
    code = _model_code(config, accept_model_change, backbone)
    updater = Updater.load(
        state, model=code, backbone=backbone, accept_model_change=accept_model_change
    )
    inputs = load_features(
        data,
        target=target,
        name=data,
        columns=updater.feature_names,
        tokenize=updater.tokenizer,
    )
    result = updater.predict_proba(inputs) if probabilities else updater.predict(inputs)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "wb") as handle:  # np.save(path) would append ".npy" to other names
        np.save(handle, result.numpy(), allow_pickle=False)
    typer.echo(
        f"wrote {tuple(result.shape)} {'probabilities' if probabilities else 'class ids'}"
        f" -> {output}"
    )


@app.command()
def shift(
    reference: Annotated[
        str,
        typer.Option(
            help="Data the model knows (e.g. its last training chunk): .npy, .npz, .csv or "
            ".parquet (labels ignored); a folder with --dataset."
        ),
    ],
    data: Annotated[str, typer.Option(help="New data to compare with --reference.")],
    state: Annotated[
        str | None,
        typer.Option(help="State whose model gives the features (optional with --features raw)."),
    ] = None,
    detector: Annotated[
        str, typer.Option(help="mmd (kernel two-sample test) or ks (per-feature KS, Bonferroni).")
    ] = "mmd",
    features: Annotated[
        str,
        typer.Option(
            help="model (penultimate layer), encoder (the --backbone's CLS feature) or raw "
            "(the inputs, flattened)."
        ),
    ] = "model",
    alpha: Annotated[float, typer.Option(help="Significance level: shift when p <= alpha.")] = 0.05,
    permutations: Annotated[int, typer.Option(help="Permutations of the MMD test.")] = 1000,
    max_samples: Annotated[
        int,
        typer.Option(
            metavar="N",
            help="Rows per side, a seeded random subsample of larger data (0: all; the MMD "
            "test's time grows with the square).",
        ),
    ] = 10_000,
    seed: Annotated[int, typer.Option(help="Seed of the subsamples and permutations.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Rows per forward pass.")] = 256,
    target: Target = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="--reference and --data are folders of this dataset: image-folder or hf."
        ),
    ] = None,
    dataset_option: DatasetOption = None,
    config: StateModelCode = None,
    accept_model_change: AcceptModelChange = False,
    backbone: StateBackbone = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Test whether --data has shifted away from --reference (covariate shift).

    Prints the score (MMD^2, or the largest KS statistic) and the p-value.

    Exit status: 0 no shift, 4 shift detected (p <= alpha), 1 error, 2 usage error.
    """
    from ricordo.shift import detect_shift

    if state is not None:
        _persistent(state, "--state")
    elif config is not None or backbone is not None or accept_model_change:
        raise ConfigError("--config/--backbone/--accept-model-change apply to a --state")
    if max_samples < 0:
        raise ConfigError(f"--max-samples {max_samples} must be >= 0 (0: all rows)")
    result = detect_shift(
        state,
        reference,
        data,
        detector=detector,
        features=features,
        alpha=alpha,
        permutations=permutations,
        max_samples=max_samples or None,
        seed=seed,
        batch_size=batch_size,
        target=target,
        dataset=dataset,
        dataset_options=_pairs(dataset_option, "--dataset-option"),
        backbone=backbone,
        model=_model_code(config, accept_model_change, backbone),
        accept_model_change=accept_model_change,
    )
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=1))
    else:
        typer.echo(result.summary())
        shifted = result.details.get("most_shifted")
        if shifted and result.shifted:
            typer.echo(
                "most shifted features: "
                + ", ".join(
                    f"{f['feature']} (KS {f['statistic']:.3f}, p {f['p_value']:.3g})"
                    for f in shifted
                )
            )
    if result.shifted:
        raise typer.Exit(SHIFT_DETECTED)


@app.command()
def info(
    state: Annotated[str, typer.Argument(help="State to describe.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Describe a state: method, model, memory, lineage and update history."""
    from ricordo.state import read_alias, read_manifest, resolve_alias

    _persistent(state, "STATE")
    alias = read_alias(state)
    manifest = read_manifest(resolve_alias(state))
    if as_json:
        typer.echo(json.dumps(manifest, indent=1))
        return
    meta = manifest["meta"]
    spec = meta.get("model_spec") or {}
    model = _model_label(spec)
    memory = meta.get("memory")
    lines = [
        f"state        {state}",
        f"created      {manifest['created']} (ricordo {manifest['library_version']}, "
        f"format {manifest['format_version']})",
        f"parent       {manifest.get('parent') or '-'}",
        f"method       {meta['method']} {meta.get('params') or ''}",
        f"model        {model}, input {tuple(spec.get('input_shape', []))}, "
        f"{spec.get('num_classes')} outputs",
        f"classes      {meta.get('seen_classes')}",
        f"updates      {meta.get('updates')}",
        "memory       "
        + (
            f"{memory['size']}/{memory['capacity'] or 'unbounded'} ({memory['policy']})"
            if memory
            else "-"
        ),
        f"files        {len(manifest['files'])}, "
        f"{sum(f['size'] for f in manifest['files'].values())} bytes",
    ]
    holdout = meta.get("holdout")
    if holdout:
        per_update = ", ".join(f"{u}: {n}" for u, n in holdout["per_update"].items())
        lines.append(f"held out     {holdout['rows']} rows (per update {per_update})")
    if meta.get("gate"):
        lines.append(f"gate         {_gate_line(meta['gate'])}")
    if alias is not None:
        lines.insert(1, f"alias        {alias.name} -> {alias.target}")
    typer.echo("\n".join(lines))


def _model_label(spec: dict[str, Any]) -> str:
    """The model line of ``ricordo info``: a built-in name, or the user code the state needs."""
    kind = spec.get("kind")
    if kind == "backbone":
        sha = spec.get("backbone_fingerprint")
        short = sha[:12] if isinstance(sha, str) else "unknown"
        return f"backbone {spec.get('backbone')} (sha256 {short}) + linear head"
    if kind not in ("code", "config"):
        return str(spec.get("name"))
    if kind == "config":  # older states: an absolute path, shown by its name only
        name = Path(str(spec.get("path"))).name
    elif spec.get("source_type") == "file":
        name = str(spec.get("source"))
    else:
        name = f"{spec.get('source')}:{spec.get('function')}"
    sha = spec.get("sha256")
    return f"your code {name} (sha256 {sha[:12] if isinstance(sha, str) else 'unknown'})"


@app.command(name="list")
def list_(root: Annotated[str, typer.Argument(help="Folder (or URL) holding states.")]) -> None:
    """List the states in a folder with their parents, oldest first."""
    from ricordo.state import list_aliases, list_states

    states = list_states(root)
    if not states:
        typer.echo(f"no states in {root}")
        return
    for entry in states:
        meta = entry.get("meta") or {}
        parent = entry.get("parent") or "-"
        gate = meta.get("gate") or {}
        mark = "  REFUSED by the gate" if gate and not gate.get("passed", True) else ""
        typer.echo(
            f"{entry['name']:<20} {entry['created']}  {meta.get('method', '?'):<10} "
            f"updates={meta.get('updates', '?')}  parent={parent}{mark}"
        )
    for alias in list_aliases(root):
        typer.echo(f"{alias.name:<20} -> {alias.target} (alias)")


@app.command()
def history(
    state: Annotated[str, typer.Argument(help="State (or alias) whose history to show.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the full update records as JSON.")
    ] = False,
) -> None:
    """Show every update that led to a state: data, method, options, metrics, gate, time."""
    from ricordo.lineage import history_row, state_history

    _persistent(state, "STATE")
    records = state_history(state)
    if as_json:
        typer.echo(json.dumps(records, indent=1))
        return
    header = (
        f"{'#':>3}  {'finished':<25} {'method':<10} {'rows':>6} {'held':>5} {'data sha256':<12}  "
        f"{'lr':>7} {'epochs':>6} {'loss':>8} {'held-out acc':>12}  gate / params"
    )
    lines = [header]
    for record in records:
        row = history_row(record)
        acc = row["holdout_accuracy"]
        loss = row["final_loss"]
        params = " ".join(f"{k}={v}" for k, v in sorted(row["params"].items()) if v is not None)
        lines.append(
            f"{row['update']!s:>3}  {row['finished']!s:<25} {row['method']!s:<10} "
            f"{row['samples']!s:>6} {row['held_out']!s:>5} {str(row['fingerprint'])[:12]:<12}  "
            f"{row['lr']!s:>7} {row['epochs']!s:>6} "
            f"{'-' if loss is None else f'{loss:.4f}':>8} "
            f"{'-' if acc is None else f'{acc:.4f}':>12}  {row['gate']}"
            + (f"  {params}" if params else "")
        )
    typer.echo("\n".join(lines))


@app.command()
def diff(
    a: Annotated[str, typer.Argument(help="First state (or alias), e.g. the one in service.")],
    b: Annotated[str, typer.Argument(help="Second state (or alias), e.g. a candidate.")],
    data: Annotated[
        str | None,
        typer.Option(help="Labelled rows to score both on (accuracy of each, flip rates)."),
    ] = None,
    target: Target = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the differences as JSON.")] = False,
) -> None:
    """Compare two states: method, options, model, classes, files, history (and accuracy)."""
    from ricordo.lineage import compare_on_data, diff_states

    for url, flag in ((a, "A"), (b, "B")):
        _persistent(url, flag)
    result = diff_states(a, b)
    if data is not None:
        result["data"] = {"path": data, **compare_on_data(a, b, data, target=target)}
    if as_json:
        typer.echo(json.dumps(result, indent=1))
        return
    lines = [
        f"A            {result['a']}",
        f"B            {result['b']}",
        f"history      {result['relation']}; updates {result['updates'][0]} -> "
        f"{result['updates'][1]}",
    ]
    for section in ("method", "params", "config", "model"):
        for key, (va, vb) in result[section].items():
            lines.append(f"{section:<12} {key}: {va!r} -> {vb!r}")
    classes = result["classes"]
    if classes["only_a"] or classes["only_b"]:
        lines.append(f"classes      only in A {classes['only_a']}, only in B {classes['only_b']}")
    rows_a, rows_b = result["holdout_rows"]
    if rows_a != rows_b:
        lines.append(f"held out     {rows_a} -> {rows_b} rows")
    changed = ", ".join(f"{rel} ({what})" for rel, what in result["files"].items())
    lines.append(f"files        {changed or 'identical'}")
    if "data" in result:
        d = result["data"]
        lines.append(
            f"on {data}: accuracy A {d['accuracy'][0]:.4f}, B {d['accuracy'][1]:.4f} "
            f"({d['samples']} rows); negative flips {d['negative_flip_rate']:.4f}, positive "
            f"flips {d['positive_flip_rate']:.4f}"
        )
    typer.echo("\n".join(lines))


@app.command()
def publish(
    state: Annotated[str, typer.Argument(help="State to publish (verified whole first).")],
    alias: Annotated[str, typer.Option(help="Alias to point at it, beside it: e.g. latest.")],
) -> None:
    """Point an alias (a pointer file beside the state) at a state, atomically; never copies."""
    from ricordo.state import publish as publish_state

    _persistent(state, "STATE")
    result = publish_state(state, alias)
    before = result.previous[-1]["target"] if result.previous else "-"
    typer.echo(f"{result.url} -> {result.target} (was {before})")


@app.command()
def rollback(
    alias: Annotated[str, typer.Argument(help="Alias to move back, e.g. models/latest.")],
    to: Annotated[
        str | None, typer.Option(help="State to point at (default: the previous target).")
    ] = None,
) -> None:
    """Point an alias back at its previous target (or --to a state); states stay untouched."""
    from ricordo.state import read_alias
    from ricordo.state import rollback as rollback_alias

    _persistent(alias, "ALIAS")
    current = read_alias(alias)
    result = rollback_alias(alias, to=to)
    before = current.target if current is not None else "-"
    typer.echo(f"{result.url} -> {result.target} (was {before})")


@app.command()
def methods(
    name: Annotated[
        str | None, typer.Argument(help="Method to describe (default: list them all).")
    ] = None,
) -> None:
    """List the methods, or describe one: what it does, its memory and its --param options."""
    from ricordo.methods import METHODS
    from ricordo.methods.describe import describe

    if name is None:
        docs = [describe(n) for n in METHODS.names()]
        for doc in docs:
            # A plugin's method is marked with its package (see ricordo.plugins).
            plugin = METHODS.origin(doc.name)
            mark = f" [plugin: {plugin}]" if plugin else ""
            typer.echo(f"{doc.name:<11} {doc.memory:<32} {doc.summary}{mark}")
        typer.echo("\n`ricordo methods NAME` describes one, with its parameters (--param k=v).")
        return
    doc = describe(name)
    lines = [f"{doc.name}: {doc.summary}", f"memory: {doc.memory}"]
    if METHODS.origin(doc.name):
        lines.append(f"plugin: from the package {METHODS.origin(doc.name)}")
    if doc.defaults_from:
        lines.append(f"defaults from: {doc.defaults_from}")
    lines.append("")
    if doc.params:
        lines.append("parameters (--param k=v):")
        width = max(len(p.name) for p in doc.params)
        for p in doc.params:
            default = "none" if p.default is None else str(p.default).lower()
            lines.append(f"  {p.name:<{width}}  {p.type} = {default}")
            if p.note:
                lines.append(f"  {'':<{width}}  {p.note}")
    else:
        lines.append("parameters: none")
    typer.echo("\n".join([*lines, "", doc.doc]))


@app.command()
def benchmark(
    output: Annotated[
        Path | None, typer.Option(help="Folder for the results (default: results).")
    ] = None,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config-file",
            "-c",
            help="YAML experiment file (e.g. a previous OUTPUT/experiment.yaml); options given "
            "here override it.",
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="A standard protocol by name (seq-mnist, seq-cifar10, seq-cifar100, "
            "seq-tinyimagenet): dataset, scenario, model, epochs, batch size, lr, augmentation; "
            "other options override it. 'list' describes them.",
        ),
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Built-in dataset (digits).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Folder holding the dataset files.")] = None,
    download: Annotated[
        bool | None, typer.Option("--download/--no-download", help="Fetch missing files.")
    ] = None,
    scenario: Annotated[str | None, typer.Option(help="Scenario (class-incremental).")] = None,
    scenario_option: ScenarioOption = None,
    updates: Annotated[int | None, typer.Option(help="Number of chunks (5).")] = None,
    scenario_seed: Annotated[
        int | None, typer.Option(help="Fix the scenario's seed (default: each run's seed).")
    ] = None,
    chunks: Annotated[
        Path | None,
        typer.Option(help="Folder of pre-split chunks (train-K.npz, test-K.npz) to use instead."),
    ] = None,
    validation: Annotated[
        float | None,
        typer.Option(
            metavar="F",
            help="Tune without test sets: hold out F (0 < F <= 0.5) of each training chunk, "
            "stratified by class, and evaluate on it instead of the test sets.",
        ),
    ] = None,
    methods: Annotated[
        str | None, typer.Option(help="Comma-separated methods (finetune,er,joint).")
    ] = None,
    method: Annotated[
        str | None, typer.Option(help="One method (default: the --methods list).")
    ] = None,
    seeds: Annotated[
        str | None, typer.Option(help="Comma-separated seeds: one run per method and seed.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Runs in parallel (default: runs, at most the CPUs).")
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="Run on this Ray cluster; 'local' starts one here.")
    ] = None,
    model: Model = None,
    hidden: Hidden = None,
    config: ConfigFile = None,
    model_option: ModelOption = None,
    param: Param = None,
    memory_size: MemorySize = None,
    memory_policy: MemoryPolicy = None,
    memory_option: MemoryOption = None,
    memory_storage: MemoryStorage = None,
    memory_dir: MemoryDir = None,
    memory_insert: MemoryInsert = None,
    mask_unseen: MaskUnseen = None,
    selective_backprop: SelectiveBackpropOption = None,
    keep_fraction: KeepFraction = None,
    max_classes: MaxClasses = None,
    num_classes: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="Columns of the output layer (default: the scenario's number of classes).",
        ),
    ] = None,
    growing_head: Annotated[
        bool | None,
        typer.Option(
            "--growing-head/--fixed-head",
            help="Grow the output layer as classes arrive instead of sizing it to the "
            "scenario's classes from the start (the default, as Mammoth).",
        ),
    ] = None,
    optimizer: Optimizer = None,
    lr: Lr = None,
    momentum: Momentum = None,
    weight_decay: WeightDecay = None,
    batch_size: BatchSize = None,
    epochs: Epochs = None,
    val_fraction: ValFraction = None,
    patience: Patience = None,
    early_stopping: EarlyStoppingOption = None,
    eb_every: EbEvery = None,
    eb_layers: EbLayers = None,
    eb_smoothing: EbSmoothing = None,
    eb_epsilon: EbEpsilon = None,
    seed: Seed = None,
    backend: Backend = None,
    accelerator: Accelerator = None,
    devices: Devices = None,
    precision: Precision = None,
    strategy: Strategy = None,
    threads: Threads = None,
    augment: Augment = None,
    dataset_option: DatasetOption = None,
    progress: ShowProgress = None,
    logger: LoggerOption = None,
    backbone: Backbone = None,
    max_length: MaxLength = None,
    train_backbone: TrainBackbone = None,
) -> None:
    """Run a whole scenario for every method and seed; report the accuracy matrix and CL metrics.

    With no options: digits, class-incremental, 5 updates, comparing finetune, er and joint.
    Several seeds write OUTPUT/runs/<method>-seed<k>.json and a mean ± std summary; every
    benchmark writes OUTPUT/experiment.yaml, which `-c` runs again. A grid: --param
    alpha=0.1,0.3,1 runs der[alpha=0.1], der[alpha=0.3], der[alpha=1]; tune it with
    --validation 0.2, never on the test sets.
    """
    from ricordo.bench.experiment import Experiment, merge, read_experiment_file
    from ricordo.bench.sweep import run_experiment
    from ricordo.errors import RicordoError

    if preset == "list":
        from ricordo.bench.presets import describe_presets

        typer.echo(describe_presets())
        return
    if method and methods:
        raise ConfigError("pass either --method or --methods, not both")
    if seed is not None and seeds:
        raise ConfigError("pass either --seed or --seeds, not both")
    dataset_given = {
        "--dataset": dataset,
        "--data-dir": data_dir,
        "--download": download,
        "--dataset-option": dataset_option,
        "--scenario": scenario,
        "--scenario-option": scenario_option,
        "--updates": updates,
        "--scenario-seed": scenario_seed,
    }
    clash = [flag for flag, value in dataset_given.items() if value is not None and value != []]
    if chunks is not None and clash:
        raise ConfigError(
            f"--chunks replaces the dataset and scenario; drop {', '.join(clash)} or --chunks"
        )
    overrides: dict[str, Any] = {
        "output": None if output is None else str(output),
        "dataset": dataset,
        "data_dir": None if data_dir is None else str(data_dir),
        "download": download,
        "scenario": scenario,
        "dataset_options": _pairs(dataset_option, "--dataset-option") or None,
        "scenario_options": _pairs(scenario_option, "--scenario-option") or None,
        "updates": updates,
        "scenario_seed": scenario_seed,
        "chunks": None if chunks is None else str(chunks),
        "validation": validation,
        "preset": preset,
        "head": None if growing_head is None else ("growing" if growing_head else "fixed"),
        "methods": method or methods,
        "seeds": seeds if seeds else seed,
        "workers": workers,
        "ray_address": ray_address,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    # --method/--seed here select runs, not UpdateConfig fields.
    given = {k: v for k, v in locals().items() if k not in ("method", "seed", "overrides")}
    overrides.update(_config_options(given))
    base = read_experiment_file(config_file) if config_file is not None else {}
    source = str(config_file) if config_file is not None else "the options"
    experiment = Experiment.from_dict(merge(base, overrides), source=source)
    out = Path(experiment.output or "results")

    def done(record: dict[str, Any]) -> None:
        if record["status"] == "ok":
            typer.echo(
                f"{record['run']}: done in {record['timing']['total_seconds']:.1f} s -> "
                f"{out / record['file']}",
                err=True,
            )
        else:
            typer.echo(f"{record['run']}: FAILED: {record['error']}", err=True)

    summary = run_experiment(experiment, out, on_done=done)
    _print_summary(summary)
    if summary["failed"]:
        failed = summary["failed"]
        raise RicordoError(
            f"{len(failed)} of {len(summary['runs'])} runs failed "
            f"({', '.join(f['run'] for f in failed)}); first error: {failed[0]['error']}; "
            f"see {out / 'summary.json'}"
        )


def _print_summary(summary: dict[str, Any]) -> None:
    """The combined table of a benchmark: accuracies in %, mean ± std over seeds.

    It fits the terminal (not a terminal: $COLUMNS, else 80 columns): when the full table is
    wider, a compact one (short headers, no vertical rules, each std under its mean) and a
    legend of the short headers; summary.md keeps the full table.
    """
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.measure import Measurement
    from rich.table import Table

    from ricordo.bench.sweep import SHORT_HEADERS, evaluation_note, summary_table

    console = Console()
    seeds = summary["experiment"]["seeds"]
    title = "Continual-learning metrics (accuracy in %"
    title += f", mean ± std over {len(seeds)} seeds)" if len(seeds) > 1 else ")"
    if summary["experiment"].get("validation"):  # never to be read as test accuracies
        console.print(evaluation_note(summary["experiment"]["validation"]), style="bold")

    def build(short: bool) -> Table:
        headers, rows = summary_table(summary, short=short)
        if short:  # no vertical rules, one space between columns
            table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 0))
        else:
            table = Table(title=title, box=box.HEAVY_HEAD)
        for i, header in enumerate(headers):
            # Values and method names are never cut (a cut number misleads); headers wrap at
            # spaces, so a column is as wide as its widest value or header word.
            lines = [line for row in rows for line in row[i].splitlines()] + header.split()
            table.add_column(
                header,
                justify="left" if i == 0 else "right",
                no_wrap=i == 0,
                min_width=max(map(len, lines)),
            )
        for row in rows:
            # Grid runs are named der[alpha=0.1]: brackets are text here, not rich markup.
            table.add_row(*(escape(cell) for cell in row))
        return table

    table = build(short=False)
    natural = Measurement.get(console, console.options.update_width(10_000), table).maximum
    if natural <= console.width:
        console.print(table)
        return
    console.print(build(short=True))
    shown = set(summary_table(summary, short=True)[0])
    legend = [f"{short} = {long}" for long, short in SHORT_HEADERS.items() if short in shown]
    console.print("; ".join(legend) + ".", style="dim")


@app.command()
def report(
    results_dir: Annotated[
        Path, typer.Argument(help="Folder of benchmark results (searched recursively).")
    ],
    output: Annotated[
        Path | None, typer.Option(help="Folder for the report (default: RESULTS_DIR/report).")
    ] = None,
    latex: Annotated[
        bool, typer.Option("--latex", help="Also write table.tex (booktabs).")
    ] = False,
) -> None:
    """Write an HTML page, a markdown summary, PNG plots (and a LaTeX table) of benchmark results.

    Runs of the same method are averaged over seeds (mean ± std).
    """
    from rich.console import Console

    from ricordo.bench.report import (
        aggregate,
        collect_results,
        comparison_table,
        render_report,
        table_width,
    )
    from ricordo.bench.report import rich_table as report_table

    out = (
        output
        if output is not None
        else ((results_dir.parent if results_dir.is_file() else results_dir) / "report")
    )
    skipped: list[str] = []

    def warn(message: str) -> None:
        skipped.append(message)
        typer.echo(f"ricordo: warning: {' '.join(message.split())}", err=True)

    runs = collect_results(results_dir, warn=warn, exclude=[out])
    summaries = aggregate(runs)
    written = render_report(summaries, out, latex=latex, source=results_dir, skipped=skipped)
    table = comparison_table(summaries)
    Console(width=max(120, table_width(table))).print(report_table(table))
    typer.echo(f"{len(runs)} runs of {len(summaries)} methods -> {out}")
    for path in written.values():
        typer.echo(f"  {path}")


@app.command()
def optbench(
    problems: Annotated[
        str | None,
        typer.Option(help="Comma-separated test problems (default: all; see --list)."),
    ] = None,
    optimizers: Annotated[
        str, typer.Option(help="Comma-separated optimizers (see --list).")
    ] = "sgd,momentum,adam",
    seeds: Annotated[
        int | None,
        typer.Option(help="Seeds the best learning rate is run with (default: the budget's)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(help="New or empty folder for the runs' JSON, the plots and table.tex."),
    ] = None,
    budget: Annotated[
        str,
        typer.Option(
            help="quick (about a minute), medium (minutes) or full (DeepOBS's: 36 learning "
            "rates, 10 seeds, its epochs; hours on a CPU)."
        ),
    ] = "full",
    quick: Annotated[bool, typer.Option("--quick", help="Same as --budget quick.")] = False,
    epochs: Annotated[
        int | None, typer.Option(help="Epochs for every problem (default: the budget's).")
    ] = None,
    lrs: Annotated[
        str | None,
        typer.Option(help="Comma-separated learning rates instead of the budget's log grid."),
    ] = None,
    threshold: Annotated[
        list[str] | None,
        typer.Option(
            metavar="P=V",
            help="Convergence performance of problem P for the speed measure (accuracy as a "
            "fraction); repeat. Default: the weakest baseline's final performance.",
        ),
    ] = None,
    list_: Annotated[
        bool, typer.Option("--list", help="List the problems, optimizers and budgets.")
    ] = False,
) -> None:
    """Benchmark optimizers the DeepOBS way: a learning-rate grid, the best re-run over seeds.

    Prints the table (final performance, speed, tuneability) and writes one JSON per run,
    learning-curves.png, lr-sensitivity.png, table.tex and summary.json into --output.
    """
    if list_:
        _optbench_list()
        return
    if output is None:
        raise ConfigError("ricordo optbench needs --output DIR (a new or empty folder)")
    from rich.console import Console

    from ricordo.optbench.runner import run
    from ricordo.optbench.table import rich_table

    def names(text: str | None) -> list[str] | None:
        return None if text is None else [n.strip() for n in text.split(",") if n.strip()]

    try:
        grid = None if lrs is None else [float(x) for x in names(lrs) or []]
    except ValueError:
        raise ConfigError(f"--lrs {lrs!r} must be comma-separated numbers, e.g. 0.01,0.1") from None
    try:
        thresholds = {k: float(v) for k, v in _pairs(threshold, "--threshold").items()}
    except (TypeError, ValueError):
        raise ConfigError(
            f"--threshold {threshold} must be PROBLEM=NUMBER, e.g. digits_mlp=0.9"
        ) from None

    def progress(setting: Any) -> None:
        typer.echo(
            f"{setting.problem} {setting.optimizer}: best lr {setting.best_lr:.3g} of "
            f"{len(setting.grid)}, {len(setting.runs)} seeds",
            err=True,
        )

    result = run(
        problems=names(problems),
        optimizers=names(optimizers) or [],
        seeds=seeds,
        output=output,
        budget="quick" if quick else budget,
        epochs=epochs,
        lrs=grid,
        thresholds=thresholds or None,
        on_setting=progress,
        command=" ".join(["ricordo", *sys.argv[1:]]),
    )
    Console(width=140).print(rich_table(result))
    typer.echo(f"{sum(len(s.grid) + len(s.runs) - 1 for s in result.settings)} runs -> {output}")


def _optbench_list() -> None:
    from ricordo.optbench.optimizers import BASELINES, optimizer_names
    from ricordo.optbench.problems import PROBLEMS
    from ricordo.optbench.protocol import BUDGETS

    typer.echo("problems (batch size, full epochs, metric; the DeepOBS problem it scales down):")
    for p in PROBLEMS.values():
        typer.echo(
            f"  {p.name:<15} {p.batch_size:>4} {p.epochs:>4}  test {p.metric:<9} "
            f"{p.deepobs}: {p.description}"
        )
    typer.echo("optimizers (baselines: " + ", ".join(BASELINES) + "):")
    typer.echo("  " + ", ".join(optimizer_names()))
    typer.echo("budgets (learning rates from 1e-5 to 1e2, seeds, epochs per problem):")
    for b in BUDGETS.values():
        epochs = ", ".join(f"{k} {v}" for k, v in b.epochs.items())
        typer.echo(f"  {b.name:<7} {b.grid_points:>2} lrs, {b.seeds:>2} seeds; {epochs}")


def main() -> None:
    """Entry point: run the app, turning library errors into one line and an exit status.

    Typer itself handles usage errors (exit 2); anything Ricordo raises on purpose, and OS
    errors such as a full disk, become ``ricordo: error: ...`` with exit 1.
    """
    argv = sys.argv[1:]
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        app(args=argv, prog_name="ricordo")
    except (RicordoError, OSError) as error:
        if debug:
            raise
        message = " ".join(str(error).split())
        print(f"ricordo: error: {message}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
