"""Typed, validated job configs: defaults < YAML file (``--config``) < command-line flags.

Each job owns one flat pydantic model (fields shared between jobs live in mixin sections below), so a
key has the same name in YAML (``max_steps``) and on the command line (``--max-steps``). Validation
errors name the offending key and where its value came from.
"""

from __future__ import annotations

import argparse
import json
import logging
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import PydanticUndefined

from videoalign_ray.errors import ConfigError

C = TypeVar("C", bound="JobConfig")

RENAMED_KEYS = {
    "steps": "sample_steps", "shift": "sample_shift", "sample_guidance": "cfg_scale",
    "weights": "reward_weights", "checkpoint": "reward_checkpoint", "policy": "policy_weights",
    "reference": "reference_weights", "input": "data", "output": "scores_file",
    "actors": "scorer_actors", "generators": "generator_actors",
}
"""Old key -> its one name across jobs (the same concept had different flags in different jobs). The old names
are still accepted, as flags, YAML keys and keyword arguments, with a deprecation line, for one release; they
apply to a config only where the new name is its field and the old one is not (``reference`` stays the online
job's base/previous choice)."""
DEPRECATED_PREFIX = "__deprecated__"


class JobConfig(BaseModel):
    """Base of every job config: frozen, unknown keys rejected.

    A job config that re-declares a shared field only to change its default (``max_steps: int = 1500``)
    keeps the constraints and description of the section that declared it (pydantic alone would drop
    them, and ``--max-steps -3`` would pass): see :meth:`__pydantic_init_subclass__`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        changed = False
        for name, field in cls.model_fields.items():
            for base in cls.__mro__[1:]:
                parent = base.__dict__.get("__pydantic_fields__", {}).get(name)
                if parent is None:
                    continue
                if parent.annotation == field.annotation:
                    if parent.metadata and not field.metadata:
                        field.metadata, changed = list(parent.metadata), True
                    if parent.description and not field.description:
                        field.description, changed = parent.description, True
                break
        if changed:
            cls.model_rebuild(force=True)

    @model_validator(mode="before")
    @classmethod
    def _accept_deprecated_names(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(k in RENAMED_KEYS or str(k).startswith(DEPRECATED_PREFIX) for k in data):
            return _rename_deprecated(cls, data, cls.__name__)
        return data

    def to_flat_dict(self) -> dict[str, Any]:
        """The resolved config as JSON-compatible values (for MLflow params and config.yaml)."""
        return json.loads(self.model_dump_json())

    def effective(self: C) -> C:
        """This config with every value that was left to a default chosen at run time (``None``: "from the
        preset") replaced by the value the job uses, for ``config.yaml`` and the MLflow params. Job configs whose
        defaults come from a preset override it; the base returns ``self``."""
        return self


class RuntimeSection(JobConfig):
    """Where a job writes, how it is seeded and tracked."""

    output_dir: str = Field("outputs/run", description="Folder for checkpoints, caches, rejects and the MLflow store; "
                            "or a URI (s3://bucket/run): the job works in a local mirror pushed there at the end, "
                            "cache and checkpoints go to <URI>/cache and <URI>/ray_results directly.")
    run_name: str | None = Field(None, description="Name of the run: the MLflow run's name and, in training jobs, "
                                 "the Ray Train run's (its checkpoints folder); default: the output folder's name.")
    seed: int = Field(0, description="Seed for model init, data order, noise and timesteps.")
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow store; default sqlite:///<output_dir>/mlflow.db (MLFLOW_TRACKING_URI overrides)."
    )
    mlflow_experiment: str = Field("videoalign-ray", description="MLflow experiment name.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level of videoalign_ray's loggers (stderr; other libraries log WARNING and up).")
    resume: bool = Field(False, description="Continue the run in --output-dir even though its config.yaml differs "
                         "in a setting that changes results (the differences are logged); without it such a rerun "
                         "stops with the list of changed keys.")
    overwrite: bool = Field(False, description="Start over in --output-dir: remove the earlier run there (checkpoints, "
                            "final/, samples, tables) and start a new MLflow run; the latent cache and the MLflow store "
                            "(with the earlier run) are kept. Checkpoints under a "
                            "--storage-path elsewhere are not touched: give those a new --run-name.")

    @model_validator(mode="after")
    def _resume_or_overwrite(self):
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other: continue the earlier run or start over")
        return self


def parse_weights(text: str) -> tuple[float, float, float]:
    """``"1,1,1"`` -> ``(1.0, 1.0, 1.0)``: per-dimension weights (VQ, MQ, TA), non-negative, positive sum.

    Raises:
        ConfigError: not three such numbers (the message quotes the value).
    """
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"weights must be three comma-separated numbers (VQ,MQ,TA), got {text!r}") from None
    if len(values) != 3 or any(not (v >= 0) for v in values) or sum(values) <= 0 or sum(values) == float("inf"):
        raise ConfigError(f"weights must be three non-negative numbers with a positive sum, got {text!r}")
    return values  # type: ignore[return-value]


def _check_weights(text: str) -> str:
    try:
        parse_weights(text)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return text


Weights = Annotated[str, AfterValidator(_check_weights)]
"""A config field holding ``"VQ,MQ,TA"`` weights, validated when the config is (see :func:`parse_weights`)."""


class DataSection(JobConfig):
    """Preference data and its validation."""

    data: str | None = Field(
        None, description="Preference table (CSV/Parquet/JSONL); default: the built-in synthetic dataset."
    )
    dimension: Literal["VQ", "MQ", "TA", "overall"] = Field(
        "overall", description="Which label decides chosen vs rejected (overall = majority of VQ/MQ/TA)."
    )
    max_reject_fraction: float = Field(
        0.5, ge=0.0, le=1.0, description="Fail when more than this fraction of rows is rejected."
    )
    min_decoded_fraction: float = Field(
        0.5, ge=0.0, le=1.0, description="Reject a video whose decodable frames are fewer than this fraction of "
        "the frames its container claims (truncated files)."
    )
    video_backend: Literal["auto", "pyav"] = Field(
        "auto", description="auto: decord where it is safe, PyAV otherwise; pyav: always PyAV."
    )
    cache_dir: str | None = Field(
        None, description="Latent / frame cache: a path or a URI (s3://bucket/prefix through pyarrow; AWS_* "
        "variables, AWS_ENDPOINT_URL for MinIO); default <output_dir>/cache. Shared storage on clusters.")
    encoder_actors: int | None = Field(
        None, ge=1, description="VAE encoder actors (Ray Data actor pool); default one per GPU of the cluster, 1 "
        "without GPUs. Decode tasks spread over all nodes either way.")


class ModelSection(JobConfig):
    """Which generator to load."""

    preset: Literal["tiny", "tiny-world", "wan2.1-1.3b"] = Field(
        "tiny-world",
        description="tiny: random init (CPU); tiny-world: tiny pre-trained on the synthetic world (committed asset, "
        "see jobs/pretrain_base.py); wan2.1-1.3b: a real Wan2.1-T2V-1.3B folder (--model-path).",
    )
    model_path: str | None = Field(None, description="Diffusers-format model folder (required for the real preset).")
    num_frames: int | None = Field(None, gt=0, description="Frames per video (training clips and samples); default from the preset.")
    height: int | None = Field(None, gt=0, description="Pixels; default from the preset.")
    width: int | None = Field(None, gt=0, description="Pixels; default from the preset.")


class TrainSection(JobConfig):
    """Ray Train + DeepSpeed settings shared by the training jobs."""

    num_workers: int = Field(2, ge=1, description="Ray Train workers (data-parallel ranks).")
    use_gpu: bool | None = Field(None, description="Default: True when the cluster has GPUs.")
    cpus_per_worker: int | None = Field(
        None, ge=1, description="CPUs each Ray Train worker reserves; its torch runs that many threads. Default: "
        "on CPU the cluster's free CPUs / num_workers, on GPU 1 (the other CPUs stay for data tasks).")
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage.")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU.")
    max_steps: int = Field(30, ge=0, description="Optimizer steps in total (a resumed run continues up to this).")
    batch_size: int = Field(2, ge=1, description="Pairs per worker per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps (set from --global-batch when given).")
    global_batch: int | None = Field(
        None, ge=1, description="Pairs per optimizer step over all workers: grad_accum = global_batch / (batch_size "
        "x num_workers), which must divide; the same value on any GPU count.")
    gradient_checkpointing: bool | None = Field(
        None, description="Recompute each transformer block in the backward pass (diffusers / transformers "
        "checkpointing): ~10x less activation memory for ~30% more compute. Default: on for real models, off for tiny.")
    lr: float | None = Field(None, gt=0, description="Learning rate; default from the preset (paper: 5e-6).")
    warmup_steps: int = Field(0, ge=0, description="Linear learning-rate warm-up steps.")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="After warm-up: constant lr, or cosine decay to min_lr_ratio * lr at max_steps.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Final lr / lr of the cosine schedule.")
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, ge=0, description="Gradient-norm clip; 0 disables.")
    finetune: Literal["lora", "full"] = Field("lora", description="LoRA (reference = adapters off) or full.")
    lora_rank: int | None = Field(None, gt=0, description="Default from the preset (paper: 64).")
    lora_alpha: float | None = Field(None, gt=0, description="Default 2 * rank (paper: 128).")
    checkpoint_every: int = Field(10, ge=1, description="Steps between checkpoints (each blocks on ray.train.report).")
    num_to_keep: int = Field(2, ge=1, description="Checkpoints kept.")
    log_every: int = Field(1, ge=1, description="Steps between metric logs.")
    max_failures: int = Field(3, ge=-1, description="Worker-group restarts allowed (FailureConfig).")
    storage_path: str | None = Field(
        None, description="Where Ray Train writes checkpoints and its run snapshot, under <storage_path>/<run "
        "name>: a path every node sees or a URI (s3://bucket/prefix, gs://...; credentials from the usual "
        "variables). Default <output_dir>/ray_results. A rerun with the same value and run name resumes.")
    fit_timeout_s: float = Field(
        172800.0, gt=0, description="Seconds the Ray Train run may take in all (worker start, restarts, every "
        "step) before the job fails naming it; a rerun resumes from the last checkpoint.")
    fail_at_step: int | None = Field(
        None, description="Fault injection for tests: rank 1 (or 0 with one worker) SIGKILLs itself once at this step.",
        json_schema_extra={"test_hook": True})


def _field_type(annotation: Any) -> tuple[Any, bool]:
    """The argparse converter for a field annotation and whether it is a bool flag."""
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return _field_type(args[0]) if len(args) == 1 else (str, False)
    if origin is Literal:
        return (lambda s, _vals=get_args(annotation): _coerce_literal(s, _vals)), False
    if annotation is bool:
        return _parse_bool, True
    if annotation in (int, float, str):
        return annotation, False
    return str, False


def _coerce_literal(value: str, allowed: tuple) -> Any:
    for a in allowed:
        if str(a) == value:
            return a
    raise argparse.ArgumentTypeError(f"{value!r} is not one of {', '.join(map(str, allowed))}")


def _parse_bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{value!r} is not a boolean")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the job docstring's example lines as written (the default formatter reflows them into one
    paragraph)."""


def _help_text(field) -> str:
    """A field's description with its default appended (``--help`` shows every default; the flags themselves
    default to ``SUPPRESS`` so that a YAML value is not overridden by an absent flag)."""
    text = field.description or ""
    default = field.default
    if default is not None and default is not PydanticUndefined:
        shown = str(default).lower() if isinstance(default, bool) else default
        text = f"{text} (default: {shown})".lstrip()
    # argparse %-formats help strings ("~30% more compute" made --help raise): escape the percent signs
    return text.replace("%", "%%")


def _choices(annotation: Any) -> list | None:
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return _choices(args[0]) if len(args) == 1 else None
    return list(get_args(annotation)) if origin is Literal else None


def is_test_hook(field) -> bool:
    """Fields marked ``json_schema_extra={"test_hook": True}`` (fault injection) are hidden from ``--help``."""
    return bool(isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("test_hook"))


def deprecated_names(cls: type[JobConfig]) -> dict[str, str]:
    """``{old: new}`` of :data:`RENAMED_KEYS` that apply to ``cls`` (``new`` is its field, ``old`` is not)."""
    fields = cls.model_fields
    return {old: new for old, new in RENAMED_KEYS.items() if new in fields and old not in fields}


def build_parser(cls: type[JobConfig], description: str) -> argparse.ArgumentParser:
    """An argparse parser with one ``--kebab-name`` flag per config field, plus ``--config FILE.yaml``.

    ``--help`` shows each flag's default and choices; test hooks and the deprecated names of renamed keys are
    accepted but not listed."""
    parser = argparse.ArgumentParser(description=description, formatter_class=_HelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML file with any of the keys below (snake_case).")
    for name, field in cls.model_fields.items():
        parser.add_argument("--" + name.replace("_", "-"), **_flag_kwargs(name, field))
    for old, new in deprecated_names(cls).items():
        kwargs = {**_flag_kwargs(new, cls.model_fields[new]), "dest": DEPRECATED_PREFIX + old,
                  "help": argparse.SUPPRESS}
        parser.add_argument("--" + old.replace("_", "-"), **kwargs)
    return parser


def _flag_kwargs(name: str, field) -> dict[str, Any]:
    conv, is_bool = _field_type(field.annotation)
    kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS,
                              "help": argparse.SUPPRESS if is_test_hook(field) else _help_text(field)}
    if is_bool:
        kwargs.update(nargs="?", const=True, type=conv, metavar="BOOL")
    else:
        kwargs["type"] = conv
        choices = _choices(field.annotation)
        if choices:
            kwargs["choices"] = choices
    return kwargs


def _rename_deprecated(cls: type[JobConfig], values: dict[str, Any], source: str) -> dict[str, Any]:
    """Move the values of deprecated key names onto their new names, logging one deprecation line each.

    Raises:
        ConfigError: the old and the new name are both given.
    """
    renames = deprecated_names(cls)
    out = dict(values)
    for key in list(out):
        old = key.removeprefix(DEPRECATED_PREFIX)
        if old not in renames:
            continue
        new = renames[old]
        if new in out:
            raise ConfigError(f"{source}: '{old}' is the old name of '{new}'; give only '{new}'")
        out[new] = out.pop(key)
        flag_old, flag_new = "--" + old.replace("_", "-"), "--" + new.replace("_", "-")
        logging.getLogger("videoalign_ray.config").warning(
            "%s: %s / '%s' is deprecated and will be removed in the next release; use %s / '%s'",
            source, flag_old, old, flag_new, new)
    return out


def resolve_config(cls: type[C], argv: list[str] | None = None, description: str = "") -> C:
    """Parse ``argv`` into a validated ``cls``: defaults, then ``--config`` YAML, then flags.

    Raises:
        ConfigError: unknown YAML key, unreadable YAML, or a value failing validation (names the key).
    """
    ns = vars(build_parser(cls, description).parse_args(argv))
    config_file = ns.pop("config", None)
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(_rename_deprecated(cls, load_yaml_keys(config_file), str(config_file)))
    values.update(_rename_deprecated(cls, ns, "command line"))
    return validate_config(cls, values, source=str(config_file) if config_file else "command line")


def load_yaml_keys(path: str | Path) -> dict[str, Any]:
    """Read a flat YAML mapping; keys may use dashes or underscores."""
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values, got {type(loaded).__name__}")
    return {str(k).replace("-", "_"): v for k, v in loaded.items()}


def validate_config(cls: type[C], values: dict[str, Any], source: str = "config") -> C:
    """Validate ``values`` into ``cls`` (deprecated key names accepted with a warning); errors name every
    offending key."""
    try:
        return cls.model_validate(_rename_deprecated(cls, values, source) if values else values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "<root>"
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown key '{key}'")
            else:
                problems.append(f"key '{key}': {err['msg']} (got {err.get('input')!r})")
        raise ConfigError(f"invalid config ({source}): " + "; ".join(problems)) from None
