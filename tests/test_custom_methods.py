"""custom_methods: methods added from the config, and the one-line errors for bad ones.

The end-to-end run of both routes on the smoke config is
``tests/test_workflow.py::test_custom_methods_run_through_every_stage``.
"""

from __future__ import annotations

import pytest
from conftest import PHANTOM_TEST_TASK

from nnrobustloss import pipeline as P
from nnrobustloss.errors import ConfigError
from nnrobustloss.methods import METHODS, builtin_methods, default_study_methods

TOPK = "nnunetv2.training.nnUNetTrainer.variants.loss.nnUNetTrainerTopkLoss:nnUNetTrainerTopk10Loss"
USER_TRAINER = '''
from nnrobustloss.trainers import RobustTrainer, CoTeachingTrainer


class nnUNetTrainer_User(RobustTrainer):
    pass


class NotATrainer:
    pass
'''


@pytest.fixture(autouse=True)
def _registry():
    """Leave the registry as it was: registering custom methods adds to METHODS."""
    from nnrobustloss import methods

    before, custom = dict(METHODS), set(methods._CUSTOM_IDS)
    yield
    METHODS.clear()
    METHODS.update(before)
    methods._CUSTOM_IDS.clear()
    methods._CUSTOM_IDS.update(custom)


def _config(custom, methods=None, tmp_path=None):
    from nnrobustloss.config import validate_config

    cfg = {"tasks": {"PhantomTest": PHANTOM_TEST_TASK}, "custom_methods": custom}
    if methods is not None:
        cfg["methods"] = methods
    return validate_config(cfg)


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "user_trainer.py"
    path.write_text(USER_TRAINER)
    return path


def test_a_plain_nnunet_trainer_is_wrapped_and_listed_by_default():
    from nnunetv2.training.nnUNetTrainer.variants.loss.nnUNetTrainerTopkLoss import (
        nnUNetTrainerTopk10Loss,
    )

    from nnrobustloss.trainers import RobustTrainer
    from nnrobustloss.trainers.loading import load_trainer_class

    cfg = _config({"TopK10": {"trainer": TOPK, "display": "TopK 10 %"}})
    assert cfg["methods"] == [*default_study_methods(), "TopK10"]
    assert "TopK10" not in builtin_methods()
    spec = METHODS["TopK10"]
    assert spec.display_name == "TopK 10 %" and not spec.needs_tuning and spec.peers == 1
    cls = load_trainer_class(spec)
    # RobustTrainer's overrides first, then nnU-Net's class (its _build_loss), same name
    assert cls.__mro__[1:3] == (RobustTrainer, nnUNetTrainerTopk10Loss)
    assert cls.__name__ == "nnUNetTrainerTopk10Loss"
    assert cls._build_loss is nnUNetTrainerTopk10Loss._build_loss
    assert load_trainer_class(spec) is cls  # one wrapper per class
    # the definition travels in the params of its jobs only
    assert P.train_params(cfg, "PhantomTest", "TopK10", 0)["custom_methods"] == {
        "TopK10": cfg["custom_methods"]["TopK10"]}
    assert "custom_methods" not in P.train_params(cfg, "PhantomTest", "APL2", 0)
    assert "custom_methods" in P.predict_params(cfg, "PhantomTest", "TopK10", 0)
    assert P.report_params(cfg)["custom_methods"] == {"TopK10": cfg["custom_methods"]["TopK10"]}


def test_a_user_file_trainer_with_a_search_space(user_file, monkeypatch):
    monkeypatch.chdir(user_file.parent)
    cfg = _config({"User": {"trainer": "user_trainer.py:nnUNetTrainer_User",
                            "search_space": {"t": {"low": 1, "high": 20, "log": True}}}},
                  methods=["Baseline", "User"])
    # the relative path is made absolute, so that jobs in other folders import the same file
    assert cfg["custom_methods"]["User"]["trainer"] == f"{user_file}:nnUNetTrainer_User"
    spec = METHODS["User"]
    assert spec.param_names == ("t",) and spec.search_space[0].default_value() == \
        pytest.approx(20 ** 0.5)  # the geometric midpoint of [1, 20]
    from nnrobustloss.trainers.loading import load_trainer_class

    assert load_trainer_class(spec).__name__ == "nnUNetTrainer_User"
    # another process registers it from the params alone
    params = P.tune_params(cfg, "PhantomTest", "User", 0)
    METHODS.pop("User")
    P.register_methods(params)
    assert METHODS["User"].search_space == spec.search_space


def test_a_method_of_another_config_is_unknown():
    _config({"TopK10": {"trainer": TOPK}})
    with pytest.raises(ConfigError, match="unknown method 'TopK10'"):
        _config({}, methods=["Baseline", "TopK10"])


@pytest.mark.parametrize("definition, message", [
    ({"trainer": "no.such.module:X"},
     "custom_methods.Bad.trainer: no.such.module:X: cannot be imported "
     "\\(ModuleNotFoundError: No module named 'no'\\)"),
    ({"trainer": "nnrobustloss.trainers:NoSuchClass"}, "cannot be imported \\(AttributeError"),
    ({"trainer": "nnrobustloss.trainers"},
     "custom_methods.Bad.trainer: 'nnrobustloss.trainers' is not 'module:Class'"),
    ({"trainer": "missing.py:X"}, "custom_methods.Bad.trainer: missing.py: file not found"),
    ({"trainer": "USER:NotATrainer"}, "NotATrainer is not a subclass of nnunetv2's nnUNetTrainer"),
    ({"trainer": TOPK, "search_space": {"k": {"low": 1, "high": 20}}},
     "custom_methods.Bad.search_space: nnUNetTrainerTopk10Loss is a plain nnU-Net trainer"),
    ({"trainer": "USER:nnUNetTrainer_User", "search_space": {"t": {"low": 2, "high": 1}}},
     "custom_methods.Bad.search_space.t: low \\(2.0\\) must be below high \\(1.0\\)"),
    ({"trainer": "USER:nnUNetTrainer_User",
      "search_space": {"t": {"low": 0, "high": 1, "log": True}}},
     "search_space.t: a log-scale range needs low > 0"),
    ({"trainer": "USER:nnUNetTrainer_User",
      "search_space": {"t": {"low": 0, "high": 1, "default": 3}}},
     "search_space.t.default: 3 is outside \\[0.0, 1.0\\]"),
    ({"trainer": "USER:nnUNetTrainer_User", "peers": 2},
     "custom_methods.Bad.peers: 2 needs a subclass of nnrobustloss.trainers.CoTeachingTrainer"),
])
def test_bad_custom_methods_are_one_clear_line(definition, message, user_file):
    definition = {k: (v.replace("USER", str(user_file)) if k == "trainer" else v)
                  for k, v in definition.items()}
    with pytest.raises(ConfigError, match=message) as err:
        _config({"Bad": definition})
    assert "\n" not in str(err.value)


def test_a_builtin_id_and_a_bad_schema_entry_are_refused():
    with pytest.raises(ConfigError, match="custom_methods.APL2: APL2 is a built-in method"):
        _config({"APL2": {"trainer": TOPK}})
    with pytest.raises(ConfigError, match="custom_methods.TopK10"):
        _config({"TopK10": {"trainer": TOPK, "k": 10}})  # unknown key


def test_a_two_peer_custom_method_reads_the_co_teaching_options(tmp_path):
    """A CoTeachingTrainer subclass from the config gets the co-teaching options that its base
    class reads (its schedule, peer updates), from the config's section like CoT."""
    from nnrobustloss.methods import COTEACHING_OPTIONS
    from nnrobustloss.trainers.settings import TrainerSettings

    path = tmp_path / "two_peer.py"
    path.write_text("from nnrobustloss.trainers.coteaching import nnUNetTrainer_CoT\n\n\n"
                    "class nnUNetTrainer_MyCoT(nnUNetTrainer_CoT):\n    pass\n")
    cfg = _config({"MyCoT": {"trainer": f"{path}:nnUNetTrainer_MyCoT", "peers": 2,
                             "search_space": {"forget_rate": {"low": 0, "high": 0.1}}}},
                  methods=["MyCoT"])
    assert METHODS["MyCoT"].options == COTEACHING_OPTIONS
    kw = P.train_params(cfg, "PhantomTest", "MyCoT", 0)
    assert kw["coteaching"]["delay"] == 20
    settings = TrainerSettings("MyCoT", options=P.train_kwargs(kw, tmp_path)["options"])
    assert settings.options == {"coteaching.delay": 20, "coteaching.gradual": 20,
                                "coteaching.max_fraction": 0.4,
                                "coteaching.peer_updates": "sequential"}
