"""One build's settings as a pydantic model: ``povidgen build --config FILE.yaml``.

:class:`BuildConfig` holds every setting of ``povidgen build``. Its keys are the flags' long
names without the dashes, ``-`` written ``_`` (``--noise-step 300`` is ``noise_step: 300``,
``--dataset-config NAME`` is ``dataset_config: NAME``; ``--provider``/``--hallucinator`` is
``provider``); the repeatable ``--hallucinator-option KEY=VALUE`` and ``--distorter-option
KEY=VALUE`` are the mappings ``hallucinator_options`` and ``distorter_options``. A YAML file of
such keys and the flags resolve to one :class:`BuildConfig`, the flags winning key by key
(option mappings merge, a flag's key over the file's); see :meth:`BuildConfig.resolve`.

The model maps onto the Python API: :meth:`BuildConfig.create_hallucinator` and
:meth:`BuildConfig.create_distorter` call the registered component's constructor
(:func:`povidgen.get_hallucinator`, :func:`povidgen.get_distorter`) with the options, and
:meth:`BuildConfig.image_limits` and :meth:`BuildConfig.shard_limits` make the arguments of
:meth:`povidgen.PairBuilder.from_dataset`. Some flags are shorthands for constructor options:

===================  =====================================  ============================
flag                 constructor option                     of
===================  =====================================  ============================
``--model``          ``model``                              the hallucinator
``--base-url``       ``base_url``                           the hallucinator
``--api-key-env``    ``api_key_env``                        the hallucinator
``--max-cost``       ``max_cost_usd``                       the hallucinator
``--rpm``            ``requests_per_minute``                the hallucinator
``--tpm``            ``tokens_per_minute``                  the hallucinator
``--batch``          ``mode="batch"``                       the hallucinator
``--batch-dir``      ``batch_dir``                          the hallucinator
``--cache-dir``      ``cache_dir``                          the hallucinator
``--no-cache``       ``cache=False``                        the hallucinator
``--price-in/out``   ``prices={model: ModelPrice(...)}``    the hallucinator
``--word-lists``     ``word_lists``                         the hallucinator (``rule``)
``--noise-step``     ``step``                               the distorter
``--overflow``       ``overflow``                           the distorter
===================  =====================================  ============================

A shorthand (or an option) the chosen component's constructor does not take is an error
naming the component and the options it takes, never silently dropped; a shorthand and an
option setting the same constructor argument are an error too. Option values are checked
against the constructor's type annotations where pydantic can read them, so a YAML mapping
becomes the pydantic model the constructor expects (``prices: {m: {input_per_mtok: ...}}``,
``prompt: {...}`` for a :class:`~povidgen.PromptConfig`).

Secrets: API keys are read from the environment (``api_key_env``). An option whose
annotation is :class:`pydantic.SecretStr` (``api_key``) is passed as a ``SecretStr`` and left
out of :meth:`BuildConfig.resolved_yaml`, the file written beside the output.
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
import secrets
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PydanticUserError,
    SecretStr,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails, to_jsonable_python

from povidgen.distort.base import Distorter
from povidgen.errors import PovidgenError
from povidgen.hallucinate.base import Hallucinator
from povidgen.pairs.output import MARKER, OutputFolder, OutputFolderError, read_json_object
from povidgen.pairs.shards import ShardLimits
from povidgen.registry import (
    DISTORTER_GROUP,
    HALLUCINATOR_GROUP,
    _load,
    get_distorter,
    get_hallucinator,
)
from povidgen.sources.images import ImageLimits

__all__ = ["CONFIG_FILE", "BuildConfig", "BuildConfigError"]

CONFIG_FILE = "povidgen-config.yaml"
"""The resolved configuration a CLI build writes into its output folder."""

_SEED_MAX = 2**63 - 1

# Shorthand flags: config key -> (flag, constructor option). ``price_in``/``price_out`` are
# together the ``prices`` option.
_HALLUCINATOR_SHORTHANDS: dict[str, tuple[str, str]] = {
    "model": ("--model", "model"),
    "base_url": ("--base-url", "base_url"),
    "api_key_env": ("--api-key-env", "api_key_env"),
    "max_cost": ("--max-cost", "max_cost_usd"),
    "rpm": ("--rpm", "requests_per_minute"),
    "tpm": ("--tpm", "tokens_per_minute"),
    "batch": ("--batch", "mode"),
    "batch_dir": ("--batch-dir", "batch_dir"),
    "cache_dir": ("--cache-dir", "cache_dir"),
    "no_cache": ("--no-cache", "cache"),
    "price_in": ("--price-in", "prices"),
    "price_out": ("--price-out", "prices"),
    "word_lists": ("--word-lists", "word_lists"),
}
_DISTORTER_SHORTHANDS: dict[str, tuple[str, str]] = {
    "noise_step": ("--noise-step", "step"),
    "overflow": ("--overflow", "overflow"),
}


class BuildConfigError(PovidgenError, ValueError):
    """A build configuration that cannot be used: a missing or malformed file, an unknown key,
    a wrong type, an option a component does not take (one line, naming the key)."""


class BuildConfig(BaseModel):
    """Every setting of one ``povidgen build`` (keys: the flags' names, see the module
    docstring). Paths are relative to the working directory, as on the command line.

    Example::

        config = BuildConfig.resolve(Path("build.yaml"), {"seed": 1})  # the file, then flags
        hallucinator = config.create_hallucinator()  # the registered class, with its options
        distorter = config.create_distorter()  # None for distorter: none
    """

    model_config = ConfigDict(extra="forbid")

    # the input
    demo: bool = False
    """Use the bundled synthetic scenes instead of a dataset (``--demo``)."""
    demo_size: int = Field(default=64, ge=1)
    dataset: Path | None = None
    """A file, a folder or a Hub id (``--dataset``)."""
    image_column: str = "image"
    prompt_column: str = "prompt"
    answer_column: str = "answer"
    id_column: str | None = None
    image_folder: Path | None = None
    split: str | None = None
    dataset_config: str | None = None
    """The configuration of a Hub dataset (``load_dataset(name=...)``)."""
    revision: str | None = None
    streaming: bool = False
    limit: int | None = Field(default=None, ge=0)
    turns: Literal["first", "last", "all"] = "first"
    """The exchanges of a multi-turn conversation that become pairs (``--turns``; see
    :mod:`povidgen.sources.conversations`)."""
    pair_mode: Literal["text", "image", "both", "mix"] | None = None
    """The contrast each pair carries (``--pair-mode``; see :mod:`povidgen.pairs.modes`);
    ``None``: ``both`` with a distorter, ``text`` without (what builds always made)."""
    mix: str | dict[str, float] | None = None
    """With ``pair_mode: mix``, the weights ``TEXT:IMAGE[:BOTH]`` (``--mix 3:1``; in YAML
    quoted, ``'3:1'``, or a mapping ``{text: 3, image: 1}``)."""
    drop_duplicates: bool = False
    """Drop near-duplicate pairs and repeated rows, counted in ``summary.json``
    (``--drop-duplicates``; see :mod:`povidgen.pairs.duplicates`)."""
    seed: int = Field(default=0, ge=0, le=_SEED_MAX)
    # the output
    out: Path
    overwrite: bool = False
    allow_empty: bool = False
    # the hallucinator
    provider: str = "rule"
    """The registered hallucinator (``--provider``, also spelt ``--hallucinator``)."""
    model: str | None = None
    word_lists: list[Path] | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    price_in: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    price_out: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    max_cost: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    batch: bool = False
    batch_dir: Path | None = None
    cache_dir: Path | None = None
    no_cache: bool = False
    rpm: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    tpm: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    hallucinator_options: dict[str, Any] = Field(default_factory=dict)
    """More constructor options of the hallucinator (``--hallucinator-option KEY=VALUE``)."""
    # the distorter
    distorter: str = "diffusion"
    """The registered distorter, or ``none``."""
    noise_step: int | None = Field(default=None, ge=0, le=999)
    overflow: Literal["clamp", "wrap"] | None = None
    distorter_options: dict[str, Any] = Field(default_factory=dict)
    """More constructor options of the distorter (``--distorter-option KEY=VALUE``)."""
    # images
    max_image_bytes: int | None = Field(default=None, ge=1)
    max_image_pixels: int | None = Field(default=None, ge=1)
    allow_outside_image_folder: bool = False
    # the run
    concurrency: int = Field(default=8, ge=1)
    workers: int | None = Field(default=None, ge=1)
    no_rejected_images: bool = False
    num_shards: int = Field(default=1, ge=1)
    shard_index: int = Field(default=0, ge=0)
    shard_mb: float = Field(default=512, gt=0, allow_inf_nan=False)
    shard_rows: int = Field(default=10_000, ge=1)
    ray: str | None = None
    """A Ray cluster address (``auto`` when ``--ray`` is given without one)."""

    @model_validator(mode="before")
    @classmethod
    def _no_distorter(cls, data: Any) -> Any:
        # YAML's null for "no distorter" reads as the CLI's 'none'
        if isinstance(data, dict) and "distorter" in data and data["distorter"] is None:
            return {**data, "distorter": "none"}
        return data

    @model_validator(mode="before")
    @classmethod
    def _mix_as_text(cls, data: Any) -> Any:
        # YAML reads an unquoted 3:1 as the base-60 integer 181
        if isinstance(data, dict) and isinstance(data.get("mix"), int | float):
            raise ValueError(
                f"mix: {data['mix']!r} is a number; write the weights quoted ('3:1') or as a "
                "mapping ({text: 3, image: 1})"
            )
        return data

    @model_validator(mode="after")
    def _consistent(self) -> BuildConfig:
        if self.demo and self.dataset is not None:
            raise ValueError("--demo and --dataset exclude each other (demo: true, dataset: ...)")
        if not self.demo and self.dataset is None:
            raise ValueError(
                "no input: give --dataset PATH|HUB_ID or --demo (dataset: or demo: true in a "
                "config file)"
            )
        hub_only = self.dataset_config, self.revision, self.split
        if self.demo and (any(v is not None for v in hub_only) or self.streaming):
            raise ValueError("--dataset-config, --revision, --split and --streaming need --dataset")
        if self.shard_index >= self.num_shards:
            raise ValueError(
                f"--shard-index {self.shard_index} must be less than --num-shards {self.num_shards}"
            )
        if self.mix is not None and self.pair_mode != "mix":
            raise ValueError("--mix goes with --pair-mode mix (pair_mode: mix)")
        weights = self.mix_weights() or {"text": 1, "image": 1}  # a bad --mix is refused here
        uses_image = self.pair_mode in ("image", "both") or (
            self.pair_mode == "mix" and any(weights.get(m, 0) > 0 for m in ("image", "both"))
        )
        if uses_image and self.distorter == "none":
            raise ValueError(
                f"--pair-mode {self.pair_mode} makes distorted images: it needs a distorter, "
                "not --distorter none"
            )
        return self

    def mix_weights(self) -> dict[str, float] | None:
        """The ``mix=`` of :meth:`~povidgen.PairBuilder.from_dataset`: :attr:`mix` as weights
        by mode (``None`` when not given; a mix then weighs text and image alike).

        Raises:
            ValueError: a malformed ``--mix`` (one line, naming the flag).
        """
        from povidgen.pairs.modes import PairModes, parse_mix

        if self.mix is None:
            return None
        try:
            weights = parse_mix(self.mix) if isinstance(self.mix, str) else dict(self.mix)
            PairModes.mix(weights)
        except ValueError as error:
            raise ValueError(f"--mix: {error}") from None
        return weights

    # -- resolving ----------------------------------------------------------------------------

    @classmethod
    def resolve(cls, path: Path | None, flags: Mapping[str, Any]) -> BuildConfig:
        """The configuration of the YAML file at ``path`` (if any) with ``flags`` (the
        settings given on the command line, by key) over it.

        A flag wins over the file's key even when it equals the default. ``--demo`` or
        ``--dataset`` replaces the file's input, whichever of the two it named; the option
        mappings merge key by key.

        Raises:
            BuildConfigError: the file is missing or malformed, a key is unknown or a value
                of the wrong type (one line, naming the key).
        """
        values: dict[str, Any] = {} if path is None else read_yaml_mapping(path)
        if "demo" in flags or "dataset" in flags:
            values.pop("demo", None)
            values.pop("dataset", None)
        for key, value in flags.items():
            earlier = values.get(key)
            if key.endswith("_options") and isinstance(earlier, dict) and isinstance(value, dict):
                values[key] = {**earlier, **value}
            else:
                values[key] = value
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            where = f"--config {path}: " if path is not None else ""
            raise BuildConfigError(where + _summary(error)) from None

    # -- the Python API's arguments -----------------------------------------------------------

    def image_limits(self) -> ImageLimits:
        """The ``image_limits=`` of :meth:`~povidgen.PairBuilder.from_dataset`: only a folder
        the user named confines image paths (a dataset's own folder merely resolves them)."""
        caps = {
            name: value
            for name, value in (
                ("max_bytes", self.max_image_bytes),
                ("max_pixels", self.max_image_pixels),
            )
            if value is not None
        }
        confine = self.image_folder is not None and not self.allow_outside_image_folder
        return ImageLimits(**caps, confine=confine)

    def shard_limits(self) -> ShardLimits:
        """The ``shard_limits=`` of :meth:`~povidgen.PairBuilder.from_dataset`
        (``shard_mb`` MiB is ``int(shard_mb * 2**20)`` bytes)."""
        return ShardLimits(max_bytes=int(self.shard_mb * 2**20), max_rows=self.shard_rows)

    def hallucinator_options_resolved(self) -> dict[str, Any]:
        """The constructor options of the hallucinator: the shorthand flags' (see the module
        docstring), then :attr:`hallucinator_options`, checked against the constructor.

        Raises:
            BuildConfigError: a flag the chosen hallucinator does not take, an unknown option,
                an option set twice or of the wrong type.
            PluginError: no hallucinator of that name is registered.
        """
        name = self.provider
        if name != "rule" and self.word_lists:
            raise BuildConfigError("--word-lists: only for the 'rule' provider")
        if name == "rule":
            model_flags = [
                flag
                for key, (flag, _) in _HALLUCINATOR_SHORTHANDS.items()
                if key != "word_lists"
                and getattr(self, key) is not None
                and getattr(self, key) is not False
            ]
            if model_flags:
                raise BuildConfigError(
                    f"{', '.join(model_flags)}: only for model providers, not 'rule'"
                )
        shorthand: dict[str, tuple[str, Any]] = {}  # option -> (flag, value)
        for key, (flag, option) in _HALLUCINATOR_SHORTHANDS.items():
            value = getattr(self, key)
            if value is None or value is False or key.startswith("price_"):
                continue
            if key == "batch":
                value = "batch"
            elif key == "no_cache":
                value = False
            elif key == "word_lists":
                for path in value:
                    if not path.is_file():
                        raise BuildConfigError(f"--word-lists {path}: no such file")
                value = list(value)
            shorthand[option] = (flag, value)
        if (self.price_in is None) != (self.price_out is None):
            raise BuildConfigError(
                "--price-in and --price-out go together (USD per million tokens)"
            )
        if self.price_in is not None and self.price_out is not None:
            from povidgen.hallucinate.pricing import ModelPrice

            model = self.model if self.model is not None else self.hallucinator_options.get("model")
            if not isinstance(model, str):
                raise BuildConfigError(
                    "--price-in and --price-out need --model (the model they price)"
                )
            price = ModelPrice(input_per_mtok=self.price_in, output_per_mtok=self.price_out)
            shorthand["prices"] = ("--price-in/--price-out", {model: price})
        cls = _load(HALLUCINATOR_GROUP, name, "hallucinator")
        return _constructor_options(
            cls, f"the {name!r} hallucinator", "hallucinator", shorthand, self.hallucinator_options
        )

    def distorter_options_resolved(self) -> dict[str, Any] | None:
        """The constructor options of the distorter (``None`` for ``distorter: none``): the
        shorthand flags' (``--noise-step``, ``--overflow``), then :attr:`distorter_options`.

        Raises:
            BuildConfigError: as :meth:`hallucinator_options_resolved`; any distorter setting
                with ``none``.
            PluginError: no distorter of that name is registered.
        """
        shorthand = {
            option: (flag, getattr(self, key))
            for key, (flag, option) in _DISTORTER_SHORTHANDS.items()
            if getattr(self, key) is not None
        }
        if self.distorter == "none":
            given = [flag for flag, _ in shorthand.values()]
            given += [f"--distorter-option {key}" for key in self.distorter_options]
            if given:
                raise BuildConfigError(
                    f"{', '.join(given)}: there is no distorter (--distorter none)"
                )
            return None
        cls = _load(DISTORTER_GROUP, self.distorter, "distorter")
        return _constructor_options(
            cls, f"the {self.distorter!r} distorter", "distorter", shorthand, self.distorter_options
        )

    def create_hallucinator(self) -> Hallucinator:
        """The registered hallucinator :attr:`provider` with its options.

        Raises:
            BuildConfigError: see :meth:`hallucinator_options_resolved`; a ``transformers``
                model that is no local folder (nothing is downloaded).
            PovidgenError: the constructor refused its settings (``cannot set up ...``).
        """
        options = self.hallucinator_options_resolved()
        if self.provider == "transformers":
            model = options.get("model")
            if not isinstance(model, str | os.PathLike) or not Path(model).is_dir():
                raise BuildConfigError(
                    f"--model {model}: the transformers provider needs a local model folder "
                    "(nothing is downloaded)"
                )
        try:
            return get_hallucinator(self.provider, **options)
        except (ValueError, TypeError, ImportError, OSError) as error:  # settings, keys, extras
            raise PovidgenError(f"cannot set up the {self.provider!r} provider: {error}") from error

    def create_distorter(self) -> Distorter | None:
        """The registered distorter :attr:`distorter` with its options, or ``None``.

        Raises:
            BuildConfigError: see :meth:`distorter_options_resolved`.
            PovidgenError: the constructor refused its settings.
        """
        options = self.distorter_options_resolved()
        if options is None:
            return None
        try:
            return get_distorter(self.distorter, **options)
        except (ValueError, TypeError) as error:
            raise PovidgenError(
                f"bad settings for the {self.distorter!r} distorter: {error}"
            ) from error

    # -- writing ------------------------------------------------------------------------------

    def resolved_yaml(self) -> str:
        """This configuration as YAML that :meth:`resolve` reads back, secrets left out
        (``SecretStr`` values, and any option whose constructor annotation is one)."""
        data = self.model_dump(mode="python")
        for key, group, name in (
            ("hallucinator_options", HALLUCINATOR_GROUP, self.provider),
            ("distorter_options", DISTORTER_GROUP, self.distorter),
        ):
            secret = _secret_options(group, name)
            data[key] = {
                option: value
                for option, value in data[key].items()
                if option not in secret and not isinstance(value, SecretStr)
            }
        plain = to_jsonable_python(data, fallback=repr)
        header = (
            "# povidgen build: the resolved configuration of this output (the config file and\n"
            "# the flags; secrets left out). `povidgen build --config THIS_FILE` builds it again.\n"
        )
        return header + yaml.safe_dump(plain, sort_keys=False, allow_unicode=True)

    def write_beside(self, out: Path, configuration: Mapping[str, Any]) -> Path | None:
        """Write :meth:`resolved_yaml` to ``out/povidgen-config.yaml``, atomically, if ``out``
        holds the build whose :meth:`~povidgen.PairBuilder.configuration` is
        ``configuration`` (its marker says so), under the folder's lock; else leave it alone.

        Returns the file written, or ``None`` (not this build's folder, another build holding
        it, a link in the way, a write that failed: logged, never raised).
        """
        import logging

        logger = logging.getLogger("povidgen")
        folder = OutputFolder(out, overwrite=False)
        target = Path(out) / CONFIG_FILE
        wanted = json.loads(json.dumps(configuration, sort_keys=True))
        try:
            with folder.lock():
                marker = read_json_object(Path(out) / MARKER)
                if marker is None or marker.get("configuration") != wanted:
                    return None  # an earlier build's folder (kept), or not povidgen's
                if target.is_symlink() or (target.exists() and not target.is_file()):
                    logger.warning(
                        "%s is not a plain file; the configuration is not written", target
                    )
                    return None
                # a new name (exclusive create: never through a link), then one rename
                temporary = target.with_name(f".{CONFIG_FILE}.{secrets.token_hex(4)}.tmp")
                try:
                    with temporary.open("x", encoding="utf-8") as handle:
                        handle.write(self.resolved_yaml())
                    os.replace(temporary, target)
                finally:
                    temporary.unlink(missing_ok=True)
        except (OutputFolderError, OSError) as error:
            logger.warning("cannot write %s: %s", target, error)
            return None
        return target


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """The mapping of settings in the YAML file at ``path`` (``{}`` for an empty file).

    Raises:
        BuildConfigError: a missing or unreadable file, invalid YAML, a duplicate key, or a
            document that is not a mapping (one line).
    """
    import yaml

    if path.exists() and not path.is_dir() and not path.is_file():
        # a FIFO or a device would block the read or never end
        raise BuildConfigError(f"--config {path}: not a regular file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BuildConfigError(f"--config {path}: no such file") from None
    except IsADirectoryError:
        raise BuildConfigError(f"--config {path}: a folder, not a YAML file") from None
    except UnicodeDecodeError:
        raise BuildConfigError(f"--config {path}: not UTF-8 text") from None
    except OSError as error:
        raise BuildConfigError(f"--config {path}: cannot read it ({error.strerror})") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as error:
        raise BuildConfigError(
            f"--config {path}: not valid YAML ({_yaml_problem(error)})"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BuildConfigError(
            f"--config {path}: expected a mapping of settings (key: value), got {_kind(data)}"
        )
    return data


def _yaml_problem(error: Exception) -> str:
    """A YAML error on one line: what went wrong and where."""
    problem = getattr(error, "problem", None) or getattr(error, "context", None) or str(error)
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())


def _kind(value: object) -> str:
    names = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
    return names.get(type(value), type(value).__name__)


class _StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, refusing a key given twice (PyYAML keeps the last)."""


def _mapping_once(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: list[Any] = []
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"the key {key!r} is given twice", key_node.start_mark
            )
        seen.append(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_once)


def parse_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--hallucinator-option``/``--distorter-option``: the value read as a
    YAML scalar or flow collection (``0.5``, ``true``, ``[1, 2]``, ``null``; anything else is a
    string; an empty value is ``null``).

    Raises:
        ValueError: no ``=``, a key that is no Python identifier, or malformed YAML.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise ValueError(f"expected KEY=VALUE with KEY a constructor argument, got {text!r}")
    try:
        value = yaml.load(raw, Loader=_StrictLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as error:
        raise ValueError(f"{key}=...: not a YAML value ({_yaml_problem(error)})") from None
    return key, value


def _summary(error: ValidationError) -> str:
    """A pydantic error on one line: the first problem, naming its key."""
    problems = error.errors(include_url=False)
    text = _problem(problems[0])
    if len(problems) > 1:
        text += f" (and {len(problems) - 1} more)"
    return text


def _problem(problem: ErrorDetails) -> str:
    loc = ".".join(str(part) for part in problem["loc"])
    kind = problem["type"]
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(loc, BuildConfig.model_fields, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return (
            f"unknown key {loc!r}{hint} (the keys are the build flags' long names with '_' "
            "for '-', see docs/building.md)"
        )
    if kind == "missing" and loc == "out":
        return "no output folder: give --out DIR (out: in a config file)"
    if kind == "missing":
        return f"{loc}: required"
    message = problem["msg"].removeprefix("Value error, ")
    if kind == "value_error":
        return f"{loc}: {message}" if loc else message
    return f"{loc}: {message} (got {_short(problem.get('input'))})"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- constructor options ------------------------------------------------------------------------


def _constructor_options(
    cls: type,
    label: str,
    kind: str,
    shorthand: Mapping[str, tuple[str, Any]],
    options: Mapping[str, Any],
) -> dict[str, Any]:
    """``shorthand`` (option -> (flag, value)) and ``options`` as the keyword arguments of
    ``cls``'s constructor, each checked: taken by the constructor and of its annotated type."""
    clash = sorted(set(shorthand) & set(options))
    if clash:
        flag = shorthand[clash[0]][0]
        raise BuildConfigError(
            f"{flag} and the {kind} option {clash[0]!r} both set {clash[0]!r} of {label}; give "
            "one of them"
        )
    parameters, open_ended = _parameters(cls)
    takes = ", ".join(sorted(parameters)) or "none"
    if not open_ended:
        for option, (flag, _) in shorthand.items():
            if option not in parameters:
                raise BuildConfigError(
                    f"{flag}: {label} takes no option {option!r} (its options: {takes})"
                )
        for option in options:
            if option not in parameters:
                close = difflib.get_close_matches(option, parameters, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise BuildConfigError(
                    f"{kind} option {option!r}: {label} takes no such option{hint} (its "
                    f"options: {takes})"
                )
    merged = {option: value for option, (_, value) in shorthand.items()} | dict(options)
    return {
        option: _checked(label, kind, option, value, parameters.get(option))
        for option, value in merged.items()
    }


def _parameters(cls: type) -> tuple[dict[str, Any], bool]:
    """The keyword arguments ``cls(...)`` takes, with their annotations (``None`` where
    unknown), following ``**options`` up the classes' ``__init__`` methods; and whether the
    chain ends in ``**options`` that no ``__init__`` names (then anything may be passed)."""
    found: dict[str, Any] = {}
    defined = False
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        if klass is object:
            # every __init__ so far passed **options on: open unless none was defined at all
            return found, defined
        defined = True
        try:
            signature = inspect.signature(init)
        except (TypeError, ValueError):  # a builtin or C constructor: cannot tell
            return found, True
        open_ended = False
        for index, parameter in enumerate(signature.parameters.values()):
            if index == 0:
                continue  # self
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                open_ended = True
            elif parameter.kind in (
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                inspect.Parameter.KEYWORD_ONLY,
            ):
                found.setdefault(parameter.name, _annotation(parameter.annotation, init))
        if not open_ended:
            return found, False
    return found, True


def _annotation(annotation: Any, function: Any) -> Any:
    """The annotation as a type (``from __future__ import annotations`` leaves strings), or
    ``None`` if it is missing or names something only imported for type checkers."""
    if annotation is inspect.Parameter.empty:
        return None
    if isinstance(annotation, str):
        try:
            # what typing.get_type_hints does, one annotation at a time
            return eval(annotation, getattr(function, "__globals__", {}))
        except Exception:  # noqa: BLE001 - a TYPE_CHECKING-only name: the value goes unchecked
            return None
    return annotation


def _checked(label: str, kind: str, option: str, value: Any, annotation: Any) -> Any:
    """``value`` checked against ``annotation`` by pydantic: converted where it is not
    already equal (a mapping into the model it describes, ``"1e-3"`` into a float), kept as
    given where it is (so a constructor's own checks still see ``True``, not ``1``)."""
    secret = _is_secret(annotation)
    if annotation is None:
        return value
    try:
        adapter: TypeAdapter[Any] = TypeAdapter(annotation)
    except (PydanticUserError, TypeError, NameError):  # no schema for it: the constructor checks
        return SecretStr(value) if secret and isinstance(value, str) else value
    try:
        validated = adapter.validate_python(value)
    except ValidationError as error:
        message = error.errors(include_url=False)[0]["msg"]
        got = "" if secret else f" (got {_short(value)})"
        raise BuildConfigError(f"{kind} option {option!r} of {label}: {message}{got}") from None
    if secret and isinstance(validated, str):
        return SecretStr(validated)
    try:
        same = bool(validated == value) and isinstance(validated, BaseModel) is isinstance(
            value, BaseModel
        )
    except Exception:  # noqa: BLE001 - an object whose == does not give a bool
        same = False
    return value if same else validated


def _is_secret(annotation: Any) -> bool:
    """Whether ``annotation`` is or contains :class:`pydantic.SecretStr`."""
    if annotation is SecretStr:
        return True
    return any(_is_secret(argument) for argument in typing.get_args(annotation))


def _secret_options(group: str, name: str) -> set[str]:
    """The options of the component ``name`` in ``group`` annotated as secrets."""
    try:
        cls = _load(group, name, "component")
    except PovidgenError:
        return set()
    parameters, _ = _parameters(cls)
    return {option for option, annotation in parameters.items() if _is_secret(annotation)}
