"""The method registry: the one place that knows a method (docs/README.md).

``METHODS`` lists the nine methods of the study in the paper's order, then the example method
GCE (README, "Adding a loss"; ``in_default_study=False``: built only when a config lists it).
Each entry is a :class:`MethodSpec`: its id (paths, config), display name (tables), trainer
class, whether it trains on the reference labels, its search space, how many peer networks it
trains, whether its tuning trials share the co-teaching warm-up, and the config options its
trainer reads. Everything else is derived from these fields:
a method is tuned when it has a search space, the Snakemake DAG, the cost plan, the trainers'
accepted method and the predictor's trainer lookup all read the registry. Adding a method is one
trainer class and one entry here (README, "Adding a loss").

``search_space`` holds one :class:`FloatParam` per hyper-parameter with the paper's range
(docs/methods.md):

| method | parameters |
| --- | --- |
| APL2 | ``w`` in (0, 1] (sampled from [1e-3, 1]: ``w = 0`` is undefined in GCE_w = (1 - p^w) / w) |
| CoT, CoTPlus | ``forget_rate`` R in [0, 0.1] |
| StoCoT | ``a``, ``b`` in [0.5, 8], log scale (the Beta(a, b) threshold distribution) |
| SVLS | ``sigma`` in [0.2, 2] |
| HRL | ``a``, ``b`` (log), ``w``, ``sigma`` |
| GCE (example) | ``q`` in (0, 1] (sampled from [1e-3, 1]; default 0.7, Zhang and Sabuncu's) |

``options`` holds one :class:`MethodOption` per setting of its trainer that the user sets in a
config section, not tuned (docs/methods.md): the co-teaching schedule (``coteaching.delay``,
``gradual``, ``max_fraction``), the peers' update schedule (``coteaching.peer_updates``, which
changes no result), the StoCoT thresholds (``coteaching.stocot_thresholds``) and the SVLS
kernel and Dice target (``svls.kernel``, ``svls.hard_dice``). The config schema's sections of
these keys agree with the declarations (tests/test_one_source.py), the trainer reads them from
``settings.options`` (``{"section.key": value}``, validated by :func:`resolve_options`), and the
pipeline passes them on without naming any (:func:`config_options`).

Defaults (:func:`default_params`, used when a method is trained without tuning) are the
midpoint of each range, the geometric midpoint for log-scale parameters (a = b = 2), and
``w = 0.5`` (the midpoint of the paper's (0, 1]).

Trainer classes are stored as import paths ``"module:ClassName"`` (a class object is accepted
too); the registry is data and imports no trainer, so that importing it does not import nnU-Net
(the Snakefile and the cost plan read it) and the trainers can read it. Loading a method's class,
wrapping a plain nnU-Net trainer and checking a custom method's trainer is
:mod:`nnrobustloss.trainers.loading`'s job (docs/packages.md).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnrobustloss.errors import ConfigError
from nnrobustloss.schedule import MAX_SCHEDULE_FRACTION, PAPER_DELAY, PAPER_GRADUAL


@dataclass(frozen=True)
class FloatParam:
    """One float hyper-parameter with its search range ``[low, high]`` (inclusive).

    ``log`` makes Optuna sample on a log scale. ``default`` overrides the midpoint rule of
    :meth:`default_value`.
    """

    name: str
    low: float
    high: float
    log: bool = False
    default: float | None = None

    def suggest(self, trial: Any) -> float:
        """Ask an Optuna trial for a value: ``trial.suggest_float(name, low, high, log=log)``."""
        return float(trial.suggest_float(self.name, self.low, self.high, log=self.log))

    def default_value(self) -> float:
        """The untuned value: ``default`` if set, else the (geometric, for log scale) midpoint."""
        if self.default is not None:
            return float(self.default)
        if self.log:
            return float(math.sqrt(self.low * self.high))
        return float((self.low + self.high) / 2.0)

    def check(self, value: Any, method: str) -> float:
        """Return ``value`` as a float; raise ConfigError naming the method and range if invalid."""
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"params.{self.name} of method {method}: {value!r} is not a number. "
                              f"Give a float in [{self.low}, {self.high}].") from None
        if not math.isfinite(v) or v < self.low or v > self.high:
            raise ConfigError(f"params.{self.name} of method {method}: {v} is outside the search "
                              f"range [{self.low}, {self.high}]. Give a value inside it.")
        return v


OPTION_KINDS = ("int", "float", "bool", "choice")
"""Kinds of :class:`MethodOption` values (JSON schema types integer, number, boolean, enum)."""


@dataclass(frozen=True)
class MethodOption:
    """One setting of a method's trainer, the config key ``<section>.<key>``.

    ``kind``: one of :data:`OPTION_KINDS`; ``choices``: the allowed values of a ``choice``;
    ``minimum``/``maximum``: the range of an ``int`` or ``float`` (``exclusive_minimum``: the
    minimum itself is not allowed); ``results``: whether the value changes a training's
    numbers (False: it only schedules the same updates, so it is no job's param, a run may
    continue with another value, and the config passes it as a run option); ``doc``: one line,
    the key's ``description`` in the config schema (tests/test_one_source.py).
    """

    section: str
    key: str
    kind: str
    default: Any
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    results: bool = True
    doc: str = ""

    def __post_init__(self) -> None:
        if self.kind not in OPTION_KINDS or (self.kind == "choice") != bool(self.choices):
            raise ConfigError(f"option {self.name}: kind {self.kind!r} with choices "
                              f"{self.choices!r}; kinds: {', '.join(OPTION_KINDS)} (choices "
                              "only for 'choice').")
        self.check(self.default)

    @property
    def name(self) -> str:
        """``section.key``, the option's config key and its name in ``settings.options``."""
        return f"{self.section}.{self.key}"

    def _range(self) -> str:
        low = "" if self.minimum is None else \
            f"{'>' if self.exclusive_minimum else '>='} {self.minimum}"
        high = "" if self.maximum is None else f"<= {self.maximum}"
        return " and ".join(x for x in (low, high) if x)

    def check(self, value: Any) -> Any:
        """``value`` normalised (an int, float, bool or str); ConfigError naming the key
        (``svls.kernel='box': use one of islam, gaussian.``) when it is of the wrong type or
        outside the allowed values."""
        if self.kind == "choice":
            if value not in self.choices:
                raise ConfigError(f"{self.name}={value!r}: use one of "
                                  f"{', '.join(self.choices)}.")
            return str(value)
        if self.kind == "bool":
            if not isinstance(value, bool) and type(value).__name__ != "bool_":  # numpy's
                raise ConfigError(f"{self.name}={value!r}: must be true or false.")
            return bool(value)
        wanted = numbers.Integral if self.kind == "int" else numbers.Real
        if isinstance(value, bool) or not isinstance(value, wanted) or \
                not math.isfinite(float(value)) or \
                (self.minimum is not None and (value <= self.minimum if self.exclusive_minimum
                                               else value < self.minimum)) or \
                (self.maximum is not None and value > self.maximum):
            what = "an integer" if self.kind == "int" else "a number"
            where = f" {self._range()}" if self._range() else ""
            raise ConfigError(f"{self.name}={value!r}: must be {what}{where}.")
        return int(value) if self.kind == "int" else float(value)

    def schema(self) -> dict[str, Any]:
        """The option's JSON schema node, as the config schema writes it."""
        node: dict[str, Any] = {"type": {"int": "integer", "float": "number", "bool": "boolean",
                                         "choice": "string"}[self.kind]}
        if self.choices:
            node["enum"] = list(self.choices)
        if self.minimum is not None:
            node["exclusiveMinimum" if self.exclusive_minimum else "minimum"] = self.minimum
        if self.maximum is not None:
            node["maximum"] = self.maximum
        node["default"] = self.default
        return node


PEER_UPDATE_MODES = ("sequential", "joint")
"""Schedules of a two-peer step (``coteaching.peer_updates``): the same updates with one or both
forward graphs in memory (:mod:`nnrobustloss.trainers.coteaching`)."""

COTEACHING_OPTIONS = (
    MethodOption("coteaching", "delay", "int", PAPER_DELAY, minimum=0,
                 doc="epochs of plain training before the selection starts (the paper's)"),
    MethodOption("coteaching", "gradual", "int", PAPER_GRADUAL, minimum=0,
                 doc="epochs over which the selection ramps up (the paper's)"),
    MethodOption("coteaching", "max_fraction", "float", MAX_SCHEDULE_FRACTION, minimum=0,
                 maximum=1, exclusive_minimum=True,
                 doc="cap of delay and of gradual as a share of a run's epochs"),
    MethodOption("coteaching", "peer_updates", "choice", "sequential",
                 choices=PEER_UPDATE_MODES, results=False,
                 doc="sequential: one peer's forward graph in GPU memory at a time (one extra "
                     "no-grad forward); joint: both graphs at once; the same updates, not a "
                     "result setting"),
)
"""The options of every two-peer trainer (:class:`~nnrobustloss.trainers.CoTeachingTrainer`)."""
STOCOT_OPTIONS = (
    MethodOption("coteaching", "stocot_thresholds", "choice", "random",
                 choices=("random", "tiled"),
                 doc="random: one Beta threshold per voxel and step; tiled: the authors' grid"),
)
"""The StoCoT selection's options (``nnrobustloss.selection.STOCOT_MODES``)."""
SVLS_OPTIONS = (
    MethodOption("svls", "kernel", "choice", "islam", choices=("islam", "gaussian"),
                 doc="islam: the SVLS authors' kernel; gaussian: a plain normalised Gaussian"),
    MethodOption("svls", "hard_dice", "bool", False,
                 doc="true: Dice against the hard label instead of the soft target"),
)
"""The SVLS targets' options (``nnrobustloss.losses.SVLS_KERNELS``)."""


@dataclass(frozen=True)
class MethodSpec:
    """A method of the study.

    ``id``: the identifier in paths and configs; ``display_name``: the paper's name in tables;
    ``trainer_class``: an import path ``"module:ClassName"`` (or the class) of its
    ``nnUNetTrainer`` subclass; ``uses_reference``: trained on the reference labels (only
    BaselineRef); ``search_space``: its hyper-parameters (empty: nothing to tune); ``peers``: 2
    for the co-teaching family (two networks per step; twice the compute of an epoch), else 1;
    ``shares_warmup``: its tuning trials may start from the shared co-teaching warm-up
    (:mod:`nnrobustloss.warmup`; only methods that train both peers hyper-parameter-free with
    plain CE + Dice before the delay); ``table2``: the report's per-class Table 2 shows it (the
    paper's SVLS and HRL); ``options``: the config options its trainer reads
    (:class:`MethodOption`, in ``settings.options``); ``in_default_study``: a config without
    ``methods`` builds it (False for an example method that is built only when listed).
    """

    id: str
    display_name: str
    trainer_class: str | type
    uses_reference: bool = False
    search_space: tuple[FloatParam, ...] = field(default_factory=tuple)
    peers: int = 1
    shares_warmup: bool = False
    table2: bool = False
    options: tuple[MethodOption, ...] = field(default_factory=tuple)
    in_default_study: bool = True

    def __post_init__(self) -> None:
        names = [o.name for o in self.options]
        if len(set(names)) != len(names):
            raise ConfigError(f"method {self.id}: an option is declared twice ({names}).")
        if self.peers not in (1, 2):
            raise ConfigError(f"method {self.id}: peers={self.peers!r}; a method trains 1 or 2 "
                              "networks.")
        if self.shares_warmup and self.peers != 2:
            raise ConfigError(f"method {self.id}: only a two-peer method can share the "
                              "co-teaching warm-up.")

    @property
    def trainer_name(self) -> str:
        """The trainer's class name (as nnU-Net's checkpoints record it), without importing it."""
        if isinstance(self.trainer_class, type):
            return self.trainer_class.__name__
        return self.trainer_class.rpartition(":")[2]

    @property
    def needs_tuning(self) -> bool:
        """Whether the method has hyper-parameters to tune (a non-empty search space)."""
        return bool(self.search_space)

    @property
    def param_names(self) -> tuple[str, ...]:
        """Names of the hyper-parameters, in search-space order."""
        return tuple(p.name for p in self.search_space)

    def suggest(self, trial: Any) -> dict[str, float]:
        """Sample every hyper-parameter from an Optuna trial; ``{}`` for methods without any."""
        return {p.name: p.suggest(trial) for p in self.search_space}

    def option(self, name: str) -> MethodOption | None:
        """The declared option ``name`` (``section.key``), or None when the trainer reads no such
        option."""
        return next((o for o in self.options if o.name == name), None)


_SINGLE = "nnrobustloss.trainers.single"
_TWO = "nnrobustloss.trainers.coteaching"
_W = FloatParam("w", 1e-3, 1.0, default=0.5)
_R = FloatParam("forget_rate", 0.0, 0.1)
_A = FloatParam("a", 0.5, 8.0, log=True)
_B = FloatParam("b", 0.5, 8.0, log=True)
_SIGMA = FloatParam("sigma", 0.2, 2.0)
_Q = FloatParam("q", 1e-3, 1.0, default=0.7)  # Zhang & Sabuncu's q = 0.7

METHODS: dict[str, MethodSpec] = {
    m.id: m for m in (
        MethodSpec("Baseline", "Baseline", f"{_SINGLE}:nnUNetTrainer_Baseline"),
        MethodSpec("BaselineRef", "Baseline (ref.)", f"{_SINGLE}:nnUNetTrainer_Baseline",
                   uses_reference=True),
        MethodSpec("APL1", "APL1", f"{_SINGLE}:nnUNetTrainer_APL1"),
        MethodSpec("APL2", "APL2", f"{_SINGLE}:nnUNetTrainer_APL2", search_space=(_W,)),
        MethodSpec("CoT", "CoT", f"{_TWO}:nnUNetTrainer_CoT", search_space=(_R,), peers=2,
                   shares_warmup=True, options=COTEACHING_OPTIONS),
        MethodSpec("CoTPlus", "CoT+", f"{_TWO}:nnUNetTrainer_CoTPlus", search_space=(_R,),
                   peers=2, shares_warmup=True, options=COTEACHING_OPTIONS),
        MethodSpec("StoCoT", "StoCoT", f"{_TWO}:nnUNetTrainer_StoCoT", search_space=(_A, _B),
                   peers=2, shares_warmup=True, options=COTEACHING_OPTIONS + STOCOT_OPTIONS),
        MethodSpec("SVLS", "SVLS", f"{_SINGLE}:nnUNetTrainer_SVLS", search_space=(_SIGMA,),
                   table2=True, options=SVLS_OPTIONS),
        MethodSpec("HRL", "HRL", f"{_TWO}:nnUNetTrainer_HRL", search_space=(_A, _B, _W, _SIGMA),
                   peers=2, table2=True, options=COTEACHING_OPTIONS + STOCOT_OPTIONS + SVLS_OPTIONS),
        # the example of README "Adding a loss": built only when a config lists it
        MethodSpec("GCE", "GCE", f"{_SINGLE}:nnUNetTrainer_GCE", search_space=(_Q,),
                   in_default_study=False),
    )
}


def get_method(name: str) -> MethodSpec:
    """Return the spec of method ``name`` (an id such as ``CoTPlus``); ConfigError if unknown."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"method {name!r} is unknown. Known methods: "
                          f"{', '.join(METHODS)}.") from None


def default_params(method: str | MethodSpec) -> dict[str, float]:
    """The hyper-parameters used when ``method`` is trained without tuning (see module doc)."""
    spec = method if isinstance(method, MethodSpec) else get_method(method)
    return {p.name: p.default_value() for p in spec.search_space}


def resolve_params(method: str | MethodSpec,
                   params: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Complete ``params`` with defaults and check them against the search space.

    Unknown names and values outside the range raise ConfigError; the result holds exactly the
    method's parameters as floats.
    """
    spec = method if isinstance(method, MethodSpec) else get_method(method)
    params = dict(params or {})
    unknown = sorted(set(params) - set(spec.param_names))
    if unknown:
        known = ", ".join(spec.param_names) or "none"
        raise ConfigError(f"params of method {spec.id}: unknown parameter(s) {', '.join(unknown)}. "
                          f"Its parameters: {known}.")
    out = default_params(spec)
    for p in spec.search_space:
        if p.name in params:
            out[p.name] = p.check(params[p.name], spec.id)
    return out


# --- method options --------------------------------------------------------------------------

def declared_options() -> dict[str, dict[str, MethodOption]]:
    """Every option that a registered method declares, ``{section: {key: option}}`` in registry
    order: the config's option sections (``coteaching``, ``svls``), which the config schema
    spells out (a test keeps it equal). An option declared by several methods is one option."""
    out: dict[str, dict[str, MethodOption]] = {}
    for spec in METHODS.values():
        for opt in spec.options:
            known = out.setdefault(opt.section, {}).setdefault(opt.key, opt)
            if known != opt:
                raise ConfigError(f"option {opt.name}: methods declare it differently "
                                  f"({known} and {opt}); declare it once and share it.")
    return out


def flat_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``options`` as ``{"section.key": value}``: config-shaped sections (``{"svls": {"kernel":
    "gaussian"}}``) are flattened, ``"section.key"`` entries kept; ConfigError for any other
    entry."""
    out: dict[str, Any] = {}
    for name, value in (options or {}).items():
        if isinstance(value, Mapping):
            out.update({f"{name}.{key}": v for key, v in value.items()})
        elif isinstance(name, str) and "." in name:
            out[name] = value
        else:
            raise ConfigError(f"option {name!r}: give a config section ({{'svls': {{'kernel': "
                              "...}}}) or a 'section.key' name.")
    return out


def resolve_options(method: str | MethodSpec,
                    options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The options of ``method``'s trainer, ``{"section.key": value}`` in declaration order:
    every option the spec declares, from ``options`` (config sections or ``section.key``
    names, :func:`flat_options`) or its default, each checked (:meth:`MethodOption.check`).
    Options of other methods are left out, as the config's sections hold them for all methods;
    a name that no method declares raises ConfigError naming the known keys."""
    spec = method if isinstance(method, MethodSpec) else get_method(method)
    given = flat_options(options)
    known = {o.name for sec in declared_options().values() for o in sec.values()} | \
        {o.name for o in spec.options}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(f"option(s) {', '.join(unknown)}: unknown; the methods' options are "
                          f"{', '.join(sorted(known))}.")
    return {o.name: o.check(given.get(o.name, o.default)) for o in spec.options}


def config_options(config: Mapping[str, Any], results: bool) -> dict[str, dict[str, Any]]:
    """The validated ``config``'s values of the declared options (:func:`declared_options`)
    that change results (``results=True``: a job's params, so that Snakemake reruns it when one
    changes) or that do not (``results=False``: run options), ``{section: {key: value}}`` in the
    config's order; a section without such options is left out, a key the config lacks too."""
    out: dict[str, dict[str, Any]] = {}
    for section, opts in declared_options().items():
        values = {key: value for key, value in (config.get(section) or {}).items()
                  if key in opts and opts[key].results == results}
        if values:
            out[section] = values
    return out


def default_study_methods() -> list[str]:
    """Ids of the built-in methods that a config without ``methods`` builds (registry order):
    all but those with ``in_default_study=False`` (an example method, built when listed)."""
    return [m for m in builtin_methods() if METHODS[m].in_default_study]


def methods_of_trainer(trainer: type) -> list[str]:
    """Ids of the registered methods whose trainer is the class ``trainer`` (registry order);
    e.g. ``["Baseline", "BaselineRef"]`` for ``nnUNetTrainer_Baseline``. Compared by class name
    without importing the other trainers (trainer classes have unique names, as nnU-Net
    requires to find them from a checkpoint)."""
    return [m.id for m in METHODS.values() if m.trainer_name == trainer.__name__]


# --- methods from the config (custom_methods) -----------------------------------------------

_CUSTOM_IDS: set[str] = set()  # ids that add_custom_methods added to METHODS


def builtin_methods() -> list[str]:
    """Ids of the registry's methods that no config added (the package's, in registry order);
    a custom method may not reuse one."""
    return [m for m in METHODS if m not in _CUSTOM_IDS]

SEARCH_SPACE_TYPES = ("float",)
"""Values of ``custom_methods.<Id>.search_space.<name>.type``."""


def custom_key(method: str, key: str) -> str:
    """``config key custom_methods.<method>.<key>``, as the custom methods' errors name it."""
    return f"config key custom_methods.{method}.{key}"


def _search_space(method: str, space: Mapping[str, Any] | None) -> tuple[FloatParam, ...]:
    """The :class:`FloatParam` of each ``{name: {type, low, high, log, default}}`` entry;
    ConfigError naming the key when a range is empty, a log range not positive or a default
    outside the range."""
    params = []
    for name, p in (space or {}).items():
        key = custom_key(method, f"search_space.{name}")
        if not isinstance(p, Mapping) or p.get("type", "float") not in SEARCH_SPACE_TYPES:
            raise ConfigError(f"{key}: give {{type: float, low: L, high: H}} (types: "
                              f"{', '.join(SEARCH_SPACE_TYPES)}).")
        try:
            low, high = float(p["low"]), float(p["high"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{key}: needs numbers low and high, e.g. {{type: float, low: 1, "
                              "high: 20}.") from None
        log = bool(p.get("log", False))
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ConfigError(f"{key}: low ({low}) must be below high ({high}).")
        if log and low <= 0:
            raise ConfigError(f"{key}: a log-scale range needs low > 0 (got {low}).")
        default = p.get("default")
        if default is not None and not low <= float(default) <= high:
            raise ConfigError(f"{key}.default: {default} is outside [{low}, {high}].")
        params.append(FloatParam(str(name), low, high, log=log,
                                 default=None if default is None else float(default)))
    return tuple(params)


def _check_trainer_path(method: str, path: Any) -> str:
    """``module:Class`` or ``file.py:Class`` (a file made absolute); ConfigError otherwise."""
    key = custom_key(method, "trainer")
    if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
        raise ConfigError(f"{key}: {path!r} is not 'module:Class' or 'path/to/file.py:Class'.")
    where, name = path.split(":")
    if where.endswith(".py"):
        file = Path(where).expanduser().resolve()
        if not file.is_file():
            raise ConfigError(f"{key}: {where}: file not found (a relative path is read from the "
                              "working directory).")
        return f"{file}:{name}"
    return path


def custom_spec(method: str, definition: Mapping[str, Any]) -> MethodSpec:
    """The :class:`MethodSpec` of ``custom_methods.<method>`` (README, "Adding a loss"):
    ``trainer`` (``module:Class`` or ``path/to/file.py:Class``, a file made absolute),
    ``display`` (default: the id), ``search_space`` ({name: {type: float, low, high, log,
    default}}), ``peers`` (1 or 2), ``table2`` (shown in Table 2).
    The definition is checked as data only; ConfigError (one line naming the key) for an id of
    a built-in method, a malformed trainer path or a missing file, a bad search space. The
    trainer class itself is imported and checked by
    :func:`nnrobustloss.trainers.loading.register_custom_methods`."""
    if method in builtin_methods():
        raise ConfigError(f"config key custom_methods.{method}: {method} is a built-in method; "
                          "give the custom method another id.")
    peers = int(definition.get("peers", 1))
    return MethodSpec(method, str(definition.get("display") or method),
                      _check_trainer_path(method, definition.get("trainer")),
                      search_space=_search_space(method, definition.get("search_space")),
                      peers=peers, table2=bool(definition.get("table2", False)),
                      options=COTEACHING_OPTIONS if peers == 2 else ())


def add_custom_methods(specs: Mapping[str, MethodSpec]) -> None:
    """Add checked custom specs to :data:`METHODS` (after the built-in ones; a method added
    again is replaced) and note their ids as not built-in (:func:`builtin_methods`)."""
    METHODS.update(specs)
    _CUSTOM_IDS.update(specs)
