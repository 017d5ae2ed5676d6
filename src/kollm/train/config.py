"""Typed run configuration for the trainer: YAML → dataclasses (torchtitan's JobConfig idea).

Every section is a dataclass; an unknown key anywhere is an error naming its full path
(`phases[1].dataa`), so a typo never silently falls back to a default. Counts may be written
the way the reports write them: `2T`, `1.8T`, `60B`, `2M` tokens.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kollm.argtypes import apply_overrides, config_text, parse_count
from kollm.data.loader import PhaseData


@dataclass
class ModelSection:
    preset: str | None = None  # kollm.model.config preset; with init_from: only for a dry run without it
    init_from: str | None = None  # Hugging Face directory: continual pretraining (DNA 1.0)
    overrides: dict = field(default_factory=dict)  # ModelConfig fields, e.g. {mtp: true}
    vocab_size: int | None = None  # pad the vocabulary to this size (rows start at the mean embedding)
    # copied next to the exported weights; sizes a preset model (vocab, BOS/EOS); with init_from, an
    # extended tokenizer grows the checkpoint (new rows: mean of the base tokens that spelled them)
    tokenizer: str | None = None


@dataclass
class DataSection:
    shards: str = ""  # root of token shards (kollm data tokenize)
    mask_policy: str = "xlda"  # causal | document | xlda | xlda_literal (kollm.model.masks)
    restart_positions: bool = False  # RoPE positions restart per isolated document
    block_size: int = 4096  # documents per stream block (kollm.data.xlda)
    # post-training stages: training rows (a JSONL/Parquet file or directory); pretraining: unused
    train: str = ""
    # held-out data: token shards (pretraining) or rows (post-training); "" = no validation
    validation: str = ""
    # SFT (kollm.data.sft): pack conversations (document mask); false: one per row, padded. (Not
    # `packing`: that word is the XLDA packing mode of a pretraining phase, phases[].data.packing.)
    pack_conversations: bool = True
    min_score: float | None = None  # SFT: keep rows whose judge score (score_key) is >= this
    score_key: str = "score"
    # SFT: the one phase's steps = ⌈rows × epochs ÷ rows per step⌉ (rows: data.train's, packed when
    # pack_conversations; rows per step: batch.tokens ÷ seq_len); None: phases[0].steps as given
    epochs: float | None = None
    planned_rows: int = 0  # the dry run's row count while data.train is not there yet


@dataclass
class BatchSection:
    """Global batch in tokens; ramped linearly from `ramp_from` over the first `ramp_tokens`."""

    tokens: int = 2**21
    ramp_from: int | None = None
    ramp_tokens: int = 0


@dataclass
class OptimSection:
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # max global grad norm; 0 disables


@dataclass
class ScheduleSection:
    kind: str = "wsd"  # wsd | cosine | linear
    warmup_steps: int = 2000
    decay_fraction: float = 0.1  # wsd: the last 10 % of the schedule's steps decay
    # wsd: decay from the first step of this phase instead (Trillion §3.2: the annealing phase *is*
    # where the LR begins to decrease; with a batch ramp, 10 % of steps is more than 10 % of tokens)
    decay_start: str | None = None
    final_lr_ratio: float = 0.1  # every kind ends at final_lr_ratio · peak


@dataclass
class PhaseSection:
    """One phase of the run; exactly one of `tokens` / `steps` sets its length."""

    name: str
    tokens: int | None = None
    steps: int | None = None
    # the data side of the phase (mixture, length, filters), owned by the data layer; the YAML's
    # mapping is built in __post_init__, where the phase's name is known
    data: PhaseData = field(default_factory=dict)
    weight_decay: float | None = None  # None: optimizer.weight_decay
    mtp_alpha: float = 0.0
    rope_theta: float | None = None  # base-frequency change for context extension
    lr: float | None = None  # a fixed LR: the phase runs after the schedule, outside it

    def __post_init__(self) -> None:
        if isinstance(self.data, PhaseData):
            return
        if "name" in self.data:
            raise KeyError(f"phase {self.name!r}: data.name is set from the phase's name; remove it")
        try:
            self.data = PhaseData.from_dict({**self.data, "name": self.name})
        except KeyError as e:
            raise KeyError(f"phase {self.name!r}: data: {e.args[0]}") from None


@dataclass
class ParallelSection:
    mode: str = "single"  # single | ddp | zero1 | fsdp
    # false | true (whole blocks) | "op" (keep matmul and attention outputs, recompute the rest);
    # kollm.train.parallel.apply_activation_checkpointing
    activation_checkpointing: bool | str = False
    checkpoint_every: int = 1  # with true: every k-th block only (torchtitan's selective "k")
    reduce_dtype: str = "fp32"  # zero1/fsdp under bf16: the gradient reduce-scatter's dtype (fp32 | bf16)
    # bf16 autocast (fp32 master weights and AdamW states) or fp32; None: bf16 on CUDA, fp32 on CPU
    mixed_precision: str | None = None
    # torch.compile each block (kollm.train.parallel.apply_compile); None: on for CUDA, off on CPU
    compile: bool | None = None


@dataclass
class CheckpointSection:
    every: int = 0  # steps between checkpoints; 0 = only at the end
    keep: int = 3  # keep the last k
    export_hf: bool = True  # write a Hugging Face directory at the end of the run
    export_dtype: str = "bfloat16"


@dataclass
class LoggingSection:
    every: int = 1
    progress: bool = True
    peak_flops: float | None = None  # per device, for MFU; None: H100 bf16 on CUDA, no MFU on CPU
    tensorboard: bool = False  # only if the tensorboard package is installed
    wandb_project: str | None = None  # only if wandb is installed


@dataclass
class ValidationSection:
    """Validation on `data.validation` every `every` steps and once at the end (Trillion §3.3 keeps a
    held-out multilingual set); 0 = at the end only."""

    every: int = 0
    batches: int = 8  # pretraining: held-out batches drawn once (the same ones every time)
    batch_size: int | None = None  # sequences per validation batch; None: the first phase's micro-batch


@dataclass
class TrainConfig:
    name: str = "run"
    output_dir: str = "runs/run"
    seed: int = 0
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    batch: BatchSection = field(default_factory=BatchSection)
    optimizer: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    phases: list[PhaseSection] = field(default_factory=list)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    validation: ValidationSection = field(default_factory=ValidationSection)

    def __post_init__(self) -> None:
        problems = []
        if not self.phases:
            problems.append("phases: at least one phase is required")
        seen_fixed = False
        for i, p in enumerate(self.phases):
            if (p.tokens is None) == (p.steps is None):
                problems.append(f"phases[{i}] ({p.name}): give exactly one of tokens / steps")
            if p.lr is None and seen_fixed:
                problems.append(f"phases[{i}] ({p.name}): a scheduled phase cannot follow a fixed-lr phase")
            seen_fixed |= p.lr is not None
        if len({p.name for p in self.phases}) != len(self.phases):
            problems.append("phases: names must be unique")
        if self.schedule.kind not in ("wsd", "cosine", "linear"):
            problems.append(f"schedule.kind: wsd | cosine | linear, got {self.schedule.kind!r}")
        if not 0 < self.schedule.final_lr_ratio <= 1:
            problems.append(f"schedule.final_lr_ratio must be in (0, 1], got {self.schedule.final_lr_ratio}")
        if not 0 <= self.schedule.decay_fraction <= 1:
            problems.append(f"schedule.decay_fraction must be in [0, 1], got {self.schedule.decay_fraction}")
        scheduled = [p.name for p in self.phases if p.lr is None]
        if self.schedule.decay_start is not None and (self.schedule.kind != "wsd"
                                                       or self.schedule.decay_start not in scheduled):
            problems.append(f"schedule.decay_start: {self.schedule.decay_start!r} must name a scheduled phase "
                            f"({', '.join(scheduled)}) of a wsd schedule")
        if self.parallel.mode not in ("single", "ddp", "zero1", "fsdp"):
            problems.append(f"parallel.mode: single | ddp | zero1 | fsdp, got {self.parallel.mode!r}")
        ac, every = self.parallel.activation_checkpointing, self.parallel.checkpoint_every
        if ac not in (False, True, "op"):
            problems.append(f"parallel.activation_checkpointing: false | true | op, got {ac!r}")
        if not isinstance(every, int) or every < 1:
            problems.append(f"parallel.checkpoint_every must be a positive integer, got {every!r}")
        elif every > 1 and ac is not True:
            problems.append(f"parallel.checkpoint_every: {every} needs parallel.activation_checkpointing true "
                            f"(whole blocks), got {ac!r}")
        if self.parallel.reduce_dtype not in ("fp32", "bf16"):
            problems.append(f"parallel.reduce_dtype: fp32 | bf16, got {self.parallel.reduce_dtype!r}")
        if self.parallel.mixed_precision not in (None, "bf16", "fp32"):
            problems.append(f"parallel.mixed_precision: bf16 | fp32, got {self.parallel.mixed_precision!r}")
        if self.data.mask_policy not in ("causal", "document", "xlda", "xlda_literal"):
            problems.append(f"data.mask_policy: causal | document | xlda | xlda_literal, got {self.data.mask_policy!r}")
        if self.data.restart_positions and self.data.mask_policy != "document":
            # xlda lets a document attend earlier documents of other languages: restarted positions
            # would put those keys at positions after the query's
            problems.append("data.restart_positions needs mask_policy 'document' (the only policy that "
                            "fully isolates documents)")
        if self.batch.tokens <= 0:
            problems.append("batch.tokens must be positive")
        if self.validation.every < 0:
            problems.append(f"validation.every must be >= 0, got {self.validation.every}")
        if self.validation.batches < 1:
            problems.append(f"validation.batches must be >= 1, got {self.validation.batches}")
        problems += _range_problems(self)
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    @property
    def scheduled_phases(self) -> list[PhaseSection]:
        return [p for p in self.phases if p.lr is None]


def _range_problems(cfg: TrainConfig) -> list[str]:
    """Values outside their meaningful range, each naming its key (`steps: -3` would skip the phase
    and exit 0, `logging.every: 0` divide by zero, `optimizer.lr: .inf` poison every weight, `lr: 0`
    train nothing and still exit 0)."""
    def finite(v) -> bool:
        return v is not None and math.isfinite(v)

    rules: list[tuple[str, object, bool, str]] = [
        ("optimizer.lr", cfg.optimizer.lr, finite(cfg.optimizer.lr) and cfg.optimizer.lr > 0, "a finite number > 0"),
        ("optimizer.eps", cfg.optimizer.eps, finite(cfg.optimizer.eps) and cfg.optimizer.eps > 0, "> 0"),
        ("optimizer.weight_decay", cfg.optimizer.weight_decay,
         finite(cfg.optimizer.weight_decay) and cfg.optimizer.weight_decay >= 0, ">= 0"),
        ("optimizer.grad_clip", cfg.optimizer.grad_clip, finite(cfg.optimizer.grad_clip) and cfg.optimizer.grad_clip >= 0,
         ">= 0 (0 disables clipping)"),
        ("optimizer.betas", list(cfg.optimizer.betas), all(finite(b) and 0 <= b < 1 for b in cfg.optimizer.betas),
         "two numbers in [0, 1)"),
        ("schedule.warmup_steps", cfg.schedule.warmup_steps, cfg.schedule.warmup_steps >= 0, ">= 0"),
        ("batch.ramp_from", cfg.batch.ramp_from, cfg.batch.ramp_from is None or cfg.batch.ramp_from > 0, "positive"),
        ("batch.ramp_tokens", cfg.batch.ramp_tokens, cfg.batch.ramp_tokens >= 0, ">= 0"),
        ("data.block_size", cfg.data.block_size, cfg.data.block_size > 0, "positive"),
        ("checkpoint.every", cfg.checkpoint.every, cfg.checkpoint.every >= 0, ">= 0 (0: only at the end)"),
        ("checkpoint.keep", cfg.checkpoint.keep, cfg.checkpoint.keep >= 0, ">= 0 (0: keep all)"),
        ("logging.every", cfg.logging.every, cfg.logging.every > 0, "positive"),
        ("validation.batch_size", cfg.validation.batch_size,
         cfg.validation.batch_size is None or cfg.validation.batch_size > 0, "positive"),
    ]
    for i, p in enumerate(cfg.phases):
        at = f"phases[{i}]"
        rules += [(f"{at}.steps", p.steps, p.steps is None or p.steps > 0, "positive"),
                  (f"{at}.tokens", p.tokens, p.tokens is None or p.tokens > 0, "positive"),
                  (f"{at}.lr", p.lr, p.lr is None or finite(p.lr) and p.lr > 0, "a finite number > 0"),
                  (f"{at}.weight_decay", p.weight_decay, p.weight_decay is None or finite(p.weight_decay)
                   and p.weight_decay >= 0, ">= 0"),
                  (f"{at}.mtp_alpha", p.mtp_alpha, finite(p.mtp_alpha) and p.mtp_alpha >= 0, ">= 0"),
                  (f"{at}.rope_theta", p.rope_theta, p.rope_theta is None or finite(p.rope_theta)
                   and p.rope_theta > 0, "positive")]
    return [f"{key} must be {want}, got {value!r}" for key, value, ok, want in rules if not ok]


_COUNTS = {("BatchSection", "tokens"), ("BatchSection", "ramp_from"), ("BatchSection", "ramp_tokens"),
           ("PhaseSection", "tokens"), ("PhaseSection", "steps")}
# built by the section itself from the YAML's mapping (PhaseSection.__post_init__: the phase's name)
_MAPPINGS = {("PhaseSection", "data")}
# keys renamed since a recipe may have been written: the error says the new name
_RENAMED = {("DataSection", "packing"): "data.pack_conversations (SFT's pack-or-pad boolean; `packing` is the XLDA "
                                        "packing mode of a pretraining phase, phases[].data.packing)"}


def build_section(cls, raw, where: str):
    """Strict dict → dataclass: unknown keys, missing required keys and wrong types name their path."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in raw if k not in fields]
    for k in unknown:
        if (cls.__name__, k) in _RENAMED:
            raise KeyError(f"{where + '.' if where else ''}{k}: renamed {_RENAMED[cls.__name__, k]}")
    if unknown:
        raise KeyError(f"{where + '.' if where else ''}{unknown[0]}: unknown key "
                       f"(known: {', '.join(fields)})")
    kwargs = {}
    for name, value in raw.items():
        path = f"{where}.{name}" if where else name
        if value is None and _unset(fields[name]) is not None:
            value = _unset(fields[name])  # `--set data.validation=null`: an optional input turned off
        if (cls.__name__, name) in _MAPPINGS:
            if not isinstance(value, dict):
                raise ValueError(f"{path}: expected a mapping, got {value!r}")
            kwargs[name] = value
            continue
        kwargs[name] = _coerce(hints[name], value, path, (cls.__name__, name) in _COUNTS)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{where or 'config'}: missing required key {missing[0]!r}")
    return cls(**kwargs)


def _unset(f: dataclasses.Field):
    """The empty default ("", {} or []) that means "none" for an optional input, else None."""
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return default if default in ("", {}, []) else None


def _coerce(tp, value, path: str, is_count: bool):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:  # `bool | str`: a value of one of the plain types is kept as it is
            if a in (bool, str) and isinstance(value, a):
                return value
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return build_section(tp, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{path}: expected a list")
        return [_coerce(args[0], v, f"{path}[{i}]", is_count) for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ValueError(f"{path}: expected a list of {len(args)} values")
        return tuple(_coerce(a, v, f"{path}[{i}]", False) for i, (a, v) in enumerate(zip(args, value)))
    if is_count:
        return parse_count(value, path)
    if tp is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)  # YAML reads 2e-4 (no dot) as a string
        except ValueError:
            raise ValueError(f"{path}: expected a number, got {value!r}") from None
    if tp in (int, str, bool, dict) and not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ValueError(f"{path}: expected {tp.__name__}, got {value!r}")
    return value


def config_from_dict(raw: dict) -> TrainConfig:
    return build_section(TrainConfig, raw, "")


def read_config(path: str | Path, overrides: list[str] = (), what: str = "training") -> dict:
    """A stage's YAML as a dict with the `--set KEY.PATH=VALUE` overrides applied; a missing file,
    invalid YAML or a document that is not a mapping is an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {what} config")
    try:
        raw = yaml.safe_load(config_text(path))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping, got {type(raw).__name__}")
    apply_overrides(raw, list(overrides))
    return raw


def build_stage_config(raw: dict, sections: Mapping[str, type], assemble: Callable, world: int = 1):
    """A stage's config from its YAML dict: each of the stage's own `sections` (a key → a typed
    dataclass, built as strictly as the trainer's) taken out of the dict, then `assemble(raw, own,
    world)` builds the trainer's sections from what is left and returns the stage's config."""
    raw = copy.deepcopy(raw)
    own = {key: build_section(cls, raw.pop(key, {}) or {}, key) for key, cls in sections.items()}
    return assemble(raw, own, world)


def load_stage_config(path: str | Path, overrides: list[str], sections: Mapping[str, type], assemble: Callable,
                      what: str, world: int = 1):
    """The one loader every stage's config goes through (kollm.train.spec.StageSpec.load): YAML +
    `--set` (read_config), then build_stage_config; every key error names the file and the key's path."""
    raw = read_config(path, overrides, what)
    try:
        return build_stage_config(raw, sections, assemble, world)
    except (KeyError, ValueError) as e:
        msg = e.args[0] if e.args else e
        raise type(e)(f"{path}: {msg}") from None


def trainer_config(raw: dict, own: dict, world: int = 1) -> TrainConfig:
    """The assemble step of a stage whose config is the trainer's alone (pretraining, SFT)."""
    return config_from_dict(raw)


def load_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """The trainer's config from YAML + `--set` (pretraining and SFT: no sections of their own)."""
    return load_stage_config(path, overrides, {}, trainer_config, "training")


__all__ = ["TrainConfig", "PhaseSection", "build_section", "config_from_dict", "read_config", "build_stage_config", "load_stage_config",
           "trainer_config", "load_config"]
