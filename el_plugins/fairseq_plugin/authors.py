"""fairseq criterion ``encourage_loss``: the authors' command lines unchanged (lancopku/well-classified-examples-are-
underestimated, translation/readme.sh), computed by el-plugins' one implementation.

    fairseq-train ... --criterion encourage_loss --label-smoothing 0.1 --el_lb 0.1 --el_mask_pad 1 \\
        --log_end 0.5 --bonus_gamma -1 --bonus_rho 1

Their flags, their spellings, their defaults, mapped flag for flag onto ``label_smoothed_encouraging_loss`` with
the paper's smoothing convention (their label_smoothed_nll_loss spreads eps / V over every class):

    --bonus_gamma   0 no bonus (their baseline arm), -1 the log bonus, -2 the cosine bonus, > 0 the power bonus
    --bonus_rho     their weight of the target's bonus term only: with --el_lb lambda their bonus is
                    bonus_rho (1 - lambda) b(p_y) + lambda / V sum_k b(p_k), which is el-plugins' rho = bonus_rho
                    (1 - lambda) + lambda with bonus smoothing lambda / rho
    --el_lb         the bonus's own smoothing; 0 (their default) leaves it unsmoothed whatever --label-smoothing is
    --bonus_start, --log_end (default 1: the normal bonus), --defer_start, --el_schedule, --el_schedule_max_epoch,
    --el_exp_schedule_ratio   as el-plugins' --bonus-start, --log-end, --bonus-defer, --bonus-schedule,
                    --bonus-schedule-horizon, --bonus-schedule-exp-ratio (epochs). Their fairseq never applied the
                    schedule or the deferral (train.py checks for the criterion name 'enourage_loss'); here they apply.
    --el_mask_pad   1 only: 0 gives padding tokens the bonus (their own comment says it should be 1); 1 is the default
                    here (theirs was 0)

Refused with a message, never ignored: --el_mask_pad 0; flags they read nowhere (--el_linear_schedule_start,
--el_linear_schedule_end) or that no paper table uses and el-plugins does not implement (--sub_data_rho,
--bonus_abrupt, --all_dynamic_rho, --all_dynamic_data) when given a value other than their no-op default;
--log_end < 1 or --bonus_start with the cosine bonus and --log_end < 1 with the power bonus (their code ignores
them there); --bonus_start with --log_end < 1 (their formula leaves a jump in the loss at log_end).
docs/authors-flags.md has the whole map.
"""
from __future__ import annotations

from fairseq.criterions import register_criterion

from el_plugins import checks
from el_plugins.fairseq_plugin.criterion import LabelSmoothedEncouragingLossCriterion

__all__ = ['AUTHORS_BONUS', 'AUTHORS_CRITERION', 'authors_loss_settings', 'AuthorsEncourageLossCriterion', 'FLAGS',
           'NEVER_READ', 'NOT_IMPLEMENTED']

AUTHORS_CRITERION = "encourage_loss"
AUTHORS_BONUS = {-1: "log", -2: "cosine"}  # their --bonus_gamma codes; > 0 is the power bonus, 0 none
NOT_IMPLEMENTED = {"sub_data_rho": 1.0, "bonus_abrupt": -1.0, "all_dynamic_rho": 0, "all_dynamic_data": "fren",
                   "el_linear_schedule_start": 0, "el_linear_schedule_end": None}
"""Their flags el-plugins refuses, with the value at which each changes nothing in their code."""
NEVER_READ = ("el_linear_schedule_start", "el_linear_schedule_end")
FLAGS = {"bonus_gamma": "--bonus_gamma", "bonus": "--bonus_gamma", "bonus_start": "--bonus_start",
         "log_end": "--log_end", "bonus_smoothing": "--el_lb", "bonus_weight": "--bonus_rho",
         "schedule": "--el_schedule", "horizon": "--el_schedule_max_epoch", "defer": "--defer_start",
         "exp_ratio": "--el_exp_schedule_ratio", "unit": "--el_schedule's unit", "label_smoothing": "--label-smoothing"}


def authors_loss_settings(*, bonus_gamma: int, bonus_rho: float, bonus_start: float, log_end: float, el_lb: float,
                          label_smoothing: float) -> dict:
    """el-plugins' loss settings (keyword arguments of el_plugins.functional's losses, paper convention) that compute
    what the authors' criterion computes with these flags; a ValueError naming their flag for what it cannot."""
    eps = checks.check_label_smoothing(label_smoothing, "--label-smoothing")
    lam = checks.check_label_smoothing(el_lb, "--el_lb")
    rho = checks.real_number(bonus_rho)
    if rho is None or not rho >= 0:
        raise ValueError(f"--bonus_rho must be a number >= 0 (the weight of the target's bonus term), got {bonus_rho!r}")
    if isinstance(bonus_gamma, bool) or not isinstance(bonus_gamma, int) or not (bonus_gamma >= 0 or bonus_gamma in
                                                                                 AUTHORS_BONUS):
        raise ValueError(f"--bonus_gamma must be 0 (no bonus), -1 (the log bonus), -2 (the cosine bonus) or an integer "
                         f"> 0 (the power bonus -p^gamma), got {bonus_gamma!r}")
    if bonus_gamma == 0:  # their baseline arm: no bonus at all (log_end is still what past_log_end counts against)
        return dict(label_smoothing=eps, bonus_weight=0.0,
                    log_end=checks.check_log_end(1.0 if log_end is None else log_end, "--log_end"))
    kind = AUTHORS_BONUS.get(bonus_gamma, "power")
    if kind != "log" and log_end is not None and checks.check_log_end(log_end, "--log_end") < 1.0:
        raise ValueError(f"--log_end {log_end:g} has no effect with --bonus_gamma {bonus_gamma} in the authors' code "
                         f"(it shapes the log bonus, --bonus_gamma -1, only): leave it out")
    if kind == "cosine" and checks.real_number(bonus_start):
        raise ValueError("--bonus_start has no effect with --bonus_gamma -2 (the cosine bonus) in the authors' code: "
                         "leave it out")
    spec = checks.bonus_spec(kind, bonus_gamma if kind == "power" else None, bonus_start if kind != "cosine" else 0.0,
                             (1.0 if log_end is None else log_end) if kind == "log" else None, names=FLAGS)
    weight = rho * (1.0 - lam) + lam
    return dict(label_smoothing=eps, bonus_weight=weight, bonus=spec.kind,
                bonus_gamma=spec.gamma if spec.kind == "power" else None, bonus_start=spec.start,
                log_end=spec.log_end, bonus_smoothing=lam / weight if weight else 0.0)


@register_criterion(AUTHORS_CRITERION)
class AuthorsEncourageLossCriterion(LabelSmoothedEncouragingLossCriterion):
    """The authors' ``encourage_loss`` flags on el-plugins' criterion (see the module docstring)."""

    FLAG_NAMES = FLAGS

    def __init__(self, task, sentence_avg, label_smoothing, ignore_prefix_size=0, report_accuracy=False,
                 bonus_gamma=0, bonus_rho=1.0, bonus_start=0.0, defer_start=0, log_end=1.0, el_lb=0.0, el_mask_pad=1,
                 el_schedule=None, el_schedule_max_epoch=None, el_exp_schedule_ratio=None,
                 el_linear_schedule_start=None, el_linear_schedule_end=None, sub_data_rho=None, bonus_abrupt=None,
                 all_dynamic_rho=None, all_dynamic_data=None):
        given = dict(el_linear_schedule_start=el_linear_schedule_start, el_linear_schedule_end=el_linear_schedule_end,
                     sub_data_rho=sub_data_rho, bonus_abrupt=bonus_abrupt, all_dynamic_rho=all_dynamic_rho,
                     all_dynamic_data=all_dynamic_data)
        for name, value in given.items():
            if value is not None and value != NOT_IMPLEMENTED[name]:
                why = ("the authors' code reads it nowhere" if name in NEVER_READ else
                       "no paper table uses it, and el-plugins does not implement it")
                raise ValueError(f"--{name} {value}: {why}; leave it out (or at its no-op value "
                                 f"{NOT_IMPLEMENTED[name]!r})")
        if el_mask_pad != 1:
            raise ValueError(f"--el_mask_pad must be 1, got {el_mask_pad!r}: 0 gives padding tokens the bonus (the "
                             f"authors' own comment says it should be 1)")
        if el_schedule is None and el_exp_schedule_ratio is not None:
            raise ValueError("--el_exp_schedule_ratio applies to --el_schedule exp only")
        settings = authors_loss_settings(bonus_gamma=bonus_gamma, bonus_rho=bonus_rho, bonus_start=bonus_start,
                                         log_end=log_end, el_lb=el_lb, label_smoothing=label_smoothing)
        super().__init__(task, sentence_avg, **settings, smoothing_convention="paper",
                         bonus_schedule=el_schedule or "constant", bonus_schedule_horizon=el_schedule_max_epoch,
                         bonus_schedule_exp_ratio=el_exp_schedule_ratio if el_schedule == "exp" else None,
                         bonus_defer=defer_start, ignore_prefix_size=ignore_prefix_size,
                         report_accuracy=report_accuracy)

    @classmethod
    def criterion_name(cls) -> str:
        return AUTHORS_CRITERION

    @classmethod
    def add_args(cls, parser):
        """The authors' flags, spelled as theirs (underscores), with their defaults (--el_mask_pad: 1, see above);
        the flags el-plugins refuses default to None (not given)."""
        parser.add_argument("--label-smoothing", default=0.0, type=float, metavar="D",
                            help="epsilon for label smoothing, 0 means no label smoothing")
        parser.add_argument("--report-accuracy", action="store_true", help="report accuracy metric")
        parser.add_argument("--ignore-prefix-size", default=0, type=int, help="Ignore first N tokens")
        parser.add_argument("--bonus_gamma", type=int, default=0,
                            help="0: no bonus; -1: log bonus; -2: cosine bonus; > 0: power bonus -p^gamma")
        parser.add_argument("--bonus_rho", type=float, default=1.0, help="weight of the target's bonus term")
        parser.add_argument("--bonus_start", type=float, default=0.0, help="aggressive bonus: none below this p")
        parser.add_argument("--defer_start", type=int, default=0, help="epochs without the bonus first")
        parser.add_argument("--log_end", type=float, default=1.0, help="the log bonus's tangent past this p")
        parser.add_argument("--el_lb", type=float, default=0.0, help="label smoothing of the bonus term")
        parser.add_argument("--el_mask_pad", type=int, default=1, help="1: no bonus on padding (0 is refused)")
        parser.add_argument("--el_schedule", type=str, choices=["linear", "exp", "cos"], default=None,
                            help="warm-up of the bonus weight over --el_schedule_max_epoch epochs")
        parser.add_argument("--el_schedule_max_epoch", type=int, default=None)
        parser.add_argument("--el_exp_schedule_ratio", type=float, default=None, help="(default 5)")
        for name in NOT_IMPLEMENTED:
            parser.add_argument(f"--{name}", type=str if name == "all_dynamic_data" else float, default=None,
                                help="refused unless at its no-op value (not implemented by el-plugins)")
