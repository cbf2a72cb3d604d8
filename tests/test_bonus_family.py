"""The bonus family (issue 25): every member, with and without a start, smoothing and bonus smoothing, both
conventions, padding, every reduction, in float64 against an independent transcription of the formulas (written
from p, not from log p as el_plugins.core does) and of the authors' fairseq criterion; the fused op and the linear
op against the reference; the schedules of the bonus weight against the authors' --el_schedule formulas."""
import math

import pytest
import torch
import torch.nn.functional as F

from el_plugins import functional as EF
from el_plugins.checks import bonus_spec, schedule_spec
from el_plugins.core import BonusSchedule

PAD = 1
MEMBERS = {  # name: the bonus arguments
    "log": dict(bonus="log", log_end=1.0),
    "log-tail-0.75": dict(bonus="log", log_end=0.75),
    "log-tail-0.5": dict(bonus="log", log_end=0.5),
    "log-start-0.5": dict(bonus="log", log_end=1.0, bonus_start=0.5),
    "power-1": dict(bonus="power", bonus_gamma=1),
    "power-2": dict(bonus="power", bonus_gamma=2.0),
    "power-3-start-0.4": dict(bonus="power", bonus_gamma=3, bonus_start=0.4),
    "cosine": dict(bonus="cosine"),
}
SMOOTHINGS = {  # name: (label_smoothing, bonus_smoothing)
    "none": (0.0, None),
    "eps0.1": (0.1, None),
    "eps0.1-bonus-unsmoothed": (0.1, 0.0),
    "bonus-smoothing-only": (0.0, 0.2),
}


# --------------------------------------------------------------------------- independent transcriptions
def member_bonus(p, bonus="log", log_end=1.0, bonus_gamma=None, bonus_start=0.0):
    """b(p) written from p as the paper and the authors' code define each member (float64)."""
    if bonus == "log":
        b = torch.log(torch.clamp(1.0 - p, min=1e-5))
        if bonus_start:
            b = torch.where(p >= bonus_start, b - math.log(max(1.0 - bonus_start, 1e-5)), torch.zeros_like(b))
        if log_end < 1.0:
            b = torch.where(p > log_end, (p - log_end) / (log_end - 1.0) + math.log(1.0 - log_end), b)
        return b
    if bonus == "power":
        b = -p ** bonus_gamma
        if bonus_start:
            b = torch.where(p >= bonus_start, b + bonus_start ** bonus_gamma, torch.zeros_like(b))
        return b
    return torch.cos(math.pi * p) - 1.0


def weights(eps, num_classes, convention):
    if convention == "paper":
        return 1.0 - eps, eps / num_classes
    return 1.0 - eps - eps / (num_classes - 1), eps / (num_classes - 1)


def transcribed_loss(z, t, *, label_smoothing, bonus_smoothing, rho, convention, reduction, member):
    """Per row: sum_k q_k (-log p_k) + rho sum_k q'_k b(p_k), q and q' one-hot plus the smoothing's share."""
    n, v = z.shape
    p = torch.softmax(z, -1)
    keep = t != PAD
    rows = []
    lam = label_smoothing if bonus_smoothing is None else bonus_smoothing
    wy, qo = weights(label_smoothing, v, convention)
    by, bo = weights(lam, v, convention)
    for i in range(n):
        onehot = F.one_hot(t[i], v).double()
        q, qb = wy * onehot + qo, by * onehot + bo
        row = (q * -torch.log(p[i])).sum() + rho * (qb * member_bonus(p[i], **member)).sum()
        rows.append(row if keep[i] else row * 0)
    rows = torch.stack(rows)
    if reduction == "sum":
        return rows.sum()
    if reduction == "mean":
        return rows.sum() / max(int(keep.sum()), 1)
    return rows


def authors_fairseq_loss(lprobs, t, *, eps, bonus_gamma, bonus_rho, bonus_start, log_end, el_lb, schedule=1.0):
    """The authors' fairseq criterion (translation/fairseq/criterions/encourage_loss.py, compute_loss), transcribed
    term by term for --el_mask_pad 1 and reduce=True: their label-smoothed nll (eps / V on every class) plus
    bonus_rho * schedule * sum b(p_y), smoothed by el_lb as c * (1 - el_lb) + el_lb / V * schedule * sum b."""
    v = lprobs.size(-1)
    keep = t != PAD
    nll = -lprobs.gather(-1, t.unsqueeze(-1)).squeeze(-1)[keep].sum()
    smooth = -lprobs.sum(-1)[keep].sum()
    loss = (1.0 - eps) * nll + eps / v * smooth
    if bonus_gamma == 0:
        return loss
    p = lprobs.exp()
    member = {-1: dict(bonus="log", log_end=log_end, bonus_start=bonus_start),
              -2: dict(bonus="cosine")}.get(bonus_gamma, dict(bonus="power", bonus_gamma=bonus_gamma,
                                                              bonus_start=bonus_start))
    b = member_bonus(p, **member)
    c = (b.gather(-1, t.unsqueeze(-1)).squeeze(-1)[keep] * bonus_rho * schedule).sum()
    if el_lb:
        c = c * (1 - el_lb) + el_lb / v * (b.sum(-1)[keep] * schedule).sum()
    return loss + c


def make_batch(seed, n=None, v=None):
    """float64 logits with confident right, confident wrong, moderate and padding rows (p_y never within the
    clamp's 1e-5 of 1: the transcription forms 1 - p directly)."""
    gen = torch.Generator().manual_seed(seed)
    n = n or int(torch.randint(6, 40, (1,), generator=gen))
    v = v or int(torch.randint(3, 60, (1,), generator=gen))
    z = torch.randn(n, v, generator=gen, dtype=torch.float64) * 2
    t = torch.randint(0, v, (n,), generator=gen)
    t[t == PAD] = 0
    z[0, t[0]] += 7.0        # p_y close to 1 (past every log_end, within reach of float64's 1 - p)
    z[1, (t[1] + 1) % v] += 6.0  # confidently wrong
    z[2, t[2]] = z[2].max() + 0.8
    t[3::5] = PAD
    return z, t


def grad_of(fn, z, *args, **kwargs):
    x = z.detach().clone().requires_grad_()
    out = fn(x, *args, **kwargs)
    out.sum().backward()
    return out.detach(), x.grad


# --------------------------------------------------------------------------- every member and combination
@pytest.mark.parametrize("member", sorted(MEMBERS))
@pytest.mark.parametrize("smoothing", sorted(SMOOTHINGS))
@pytest.mark.parametrize("convention", ["paper", "fairseq"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_every_member_equals_its_formula_fused_and_reference(member, smoothing, convention, reduction):
    label_smoothing, bonus_smoothing = SMOOTHINGS[smoothing]
    seed = hash((member, smoothing, convention, reduction)) % 1000
    z, t = make_batch(seed)
    rho = 0.7 if seed % 2 else 1.0
    kwargs = dict(MEMBERS[member], label_smoothing=label_smoothing, bonus_smoothing=bonus_smoothing,
                  bonus_weight=rho, smoothing_convention=convention, reduction=reduction, ignore_index=PAD)
    member_args = {k: v for k, v in MEMBERS[member].items()}
    want, want_grad = grad_of(transcribed_loss, z, t, label_smoothing=label_smoothing, bonus_smoothing=bonus_smoothing,
                              rho=rho, convention=convention, reduction=reduction, member=member_args)
    for implementation in ("reference", "fused"):
        got, got_grad = grad_of(EF.encouraging_loss, z, t, implementation=implementation, **kwargs)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=lambda m: f"{implementation}: {m}")
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-10, atol=1e-10,
                                   msg=lambda m: f"{implementation} gradient: {m}")
    # the output layer fused in: equal to F.linear + the reference
    gen = torch.Generator().manual_seed(seed + 1)
    d = 7
    x = torch.randn(z.size(0), d, generator=gen, dtype=torch.float64)
    w = torch.randn(z.size(1), d, generator=gen, dtype=torch.float64)
    b = torch.randn(z.size(1), generator=gen, dtype=torch.float64)
    results = []
    for implementation in ("reference", "fused"):
        leaves = [a.clone().requires_grad_() for a in (x, w, b)]
        loss = EF.linear_encouraging_loss(leaves[0], leaves[1], t, linear_bias=leaves[2], implementation=implementation,
                                          chunk_size=5, **kwargs) if implementation == "fused" else \
            EF.linear_encouraging_loss(leaves[0], leaves[1], t, linear_bias=leaves[2], implementation=implementation,
                                       **kwargs)
        loss.sum().backward()
        results.append((loss.detach(), [leaf.grad for leaf in leaves]))
    (ref_loss, ref_grads), (fused_loss, fused_grads) = results
    torch.testing.assert_close(fused_loss, ref_loss, rtol=1e-10, atol=1e-10)
    for a, r in zip(fused_grads, ref_grads):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("bonus_gamma,bonus_start,log_end", [(-1, 0.0, 0.5), (-1, 0.0, 1.0), (-1, 0.5, 1.0),
                                                              (1, 0.0, 1.0), (2, 0.5, 1.0), (-2, 0.0, 1.0)])
@pytest.mark.parametrize("bonus_rho", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("el_lb", [0.0, 0.1])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_the_authors_fairseq_criterion_is_el_plugins_paper_convention(bonus_gamma, bonus_start, log_end, bonus_rho,
                                                                     el_lb, eps):
    """Their criterion's loss (a transcription of it) equals el-plugins' with the paper convention, through the
    mapping of their flags that the encourage_loss criterion uses (their --bonus_rho scales only the target's
    bonus term; --el_lb 0 leaves the bonus unsmoothed whatever --label-smoothing is)."""
    pytest.importorskip("fairseq")
    from el_plugins.fairseq_plugin.authors import authors_loss_settings

    z, t = make_batch(bonus_gamma * 100 + int(bonus_rho * 10) + int(el_lb * 1000), n=24, v=30)
    lprobs = torch.log_softmax(z, -1)
    want = authors_fairseq_loss(lprobs, t, eps=eps, bonus_gamma=bonus_gamma, bonus_rho=bonus_rho,
                                bonus_start=bonus_start, log_end=log_end, el_lb=el_lb)
    settings = authors_loss_settings(bonus_gamma=bonus_gamma, bonus_rho=bonus_rho, bonus_start=bonus_start,
                                     log_end=log_end, el_lb=el_lb, label_smoothing=eps)
    got = EF.encouraging_loss(lprobs, t, **settings, ignore_index=PAD, reduction="sum", smoothing_convention="paper",
                              input_is_log_probs=True, implementation="reference")
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- precision near p = 1
@pytest.mark.parametrize("member", ["log", "power-2", "cosine", "log-start-0.5", "power-3-start-0.4"])
def test_confident_rows_keep_their_precision(member):
    """float32 rows with 1 - p_y down to ~1e-5: the fused gradient of every member is at least as close to the
    float64 reference's as the float32 reference's is (1 - p formed from the other classes, not as 1 - p)."""
    dtype = torch.float32
    v, n = 50, 64
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(n, v, generator=gen, dtype=torch.float64)
    t = torch.randint(2, v, (n,), generator=gen)
    gap = torch.linspace(4, 14, n, dtype=torch.float64)  # the target's margin over the largest other logit
    z[torch.arange(n), t] = z.max(-1).values + gap
    kwargs = dict(MEMBERS[member], label_smoothing=0.1, reduction="sum")
    _, truth = grad_of(EF.encouraging_loss, z, t, implementation="reference", **kwargs)
    _, ref = grad_of(EF.encouraging_loss, z.to(dtype), t, implementation="reference", **kwargs)
    _, fused = grad_of(EF.encouraging_loss, z.to(dtype), t, implementation="fused", **kwargs)
    scale = truth.abs().max(-1, keepdim=True).values
    ref_err = ((ref.double() - truth).abs() / scale).max().item()
    fused_err = ((fused.double() - truth).abs() / scale).max().item()
    assert fused_err <= max(ref_err * 1.05, 10 * torch.finfo(dtype).eps), (fused_err, ref_err)


# --------------------------------------------------------------------------- soft and multi-label targets
@pytest.mark.parametrize("member", sorted(MEMBERS))
@pytest.mark.parametrize("bonus_smoothing", [None, 0.2])
def test_soft_and_binary_targets_take_every_member(member, bonus_smoothing):
    z, _ = make_batch(7, n=12, v=9)
    soft = torch.softmax(torch.randn(12, 9, dtype=torch.float64), -1)
    p = torch.softmax(z, -1)
    t_bonus = soft if bonus_smoothing is None else soft * (1 - bonus_smoothing) + bonus_smoothing / 9
    want = ((soft * -torch.log(p)).sum(-1) + 0.5 * (t_bonus * member_bonus(p, **MEMBERS[member])).sum(-1)).mean()
    got = EF.soft_target_encouraging_loss(z, soft, bonus_weight=0.5, bonus_smoothing=bonus_smoothing, **MEMBERS[member])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    multi = torch.rand(12, 9, dtype=torch.float64)
    s = torch.sigmoid(z)
    tb = multi if bonus_smoothing is None else multi * (1 - bonus_smoothing) + bonus_smoothing / 2
    want = (multi * -torch.log(s) + (1 - multi) * -torch.log(1 - s)
            + 0.5 * (tb * member_bonus(s, **MEMBERS[member]) + (1 - tb) * member_bonus(1 - s, **MEMBERS[member])))
    got = EF.binary_encouraging_loss(z, multi, bonus_weight=0.5, bonus_smoothing=bonus_smoothing, reduction="none",
                                     **MEMBERS[member])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_bonus_function_takes_every_member():
    p = torch.linspace(0, 1, 101, dtype=torch.float64)
    for member in MEMBERS.values():
        torch.testing.assert_close(EF.bonus(p, **{("log_end" if k == "log_end" else k): v for k, v in member.items()}),
                                   member_bonus(p, **member), rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- the schedules
def authors_schedule(epoch, schedule, max_epoch, ratio=5):
    """The authors' rho of --el_schedule (encourage_loss.py), for epochs within the horizon."""
    cur = float(epoch) / max_epoch
    if schedule == "linear":
        return cur
    if schedule == "exp":
        return math.exp((cur - 1) * ratio) if ratio > 0 else 1 - math.exp(cur * ratio)
    return (math.cos(math.pi * (1 + cur)) + 1) * 0.5


@pytest.mark.parametrize("schedule,ratio", [("linear", None), ("exp", None), ("exp", 3), ("exp", -5), ("cos", None)])
def test_schedules_are_the_authors_formulas_then_hold(schedule, ratio):
    spec = schedule_spec(schedule, horizon=10, exp_ratio=ratio)
    for epoch in range(1, 11):
        assert spec.factor(epoch) == pytest.approx(authors_schedule(epoch, schedule, 10, ratio or 5), abs=1e-15)
    assert spec.factor(25) == spec.factor(10)  # past the horizon it holds its value at the horizon


def test_deferred_start():
    spec = schedule_spec("constant", defer=3)
    assert [spec.factor(t) for t in range(1, 6)] == [0, 0, 0, 1, 1]
    spec = schedule_spec("linear", horizon=4, defer=2, unit="update")
    assert [spec.factor(t) for t in range(1, 7)] == [0, 0, 0.75, 1, 1, 1]
    assert BonusSchedule().factor(1) == 1 and BonusSchedule().is_constant


# --------------------------------------------------------------------------- bad values
@pytest.mark.parametrize("kwargs,message", [
    (dict(bonus="power"), r"bonus_gamma must be a finite number > 0 for bonus='power'"),
    (dict(bonus="power", bonus_gamma=0), r"bonus_gamma must be a finite number > 0 for bonus='power'.* got 0"),
    (dict(bonus="power", bonus_gamma=-1.5), r"bonus_gamma must be a finite number > 0"),
    (dict(bonus="log", bonus_gamma=2), r"bonus_gamma applies to bonus='power' only .* bonus='log' takes none"),
    (dict(bonus="sqrt"), r"bonus must be one of 'log', 'power', 'cosine', got 'sqrt'"),
    (dict(bonus_start=1.0), r"bonus_start must be in \[0, 1\)"),
    (dict(bonus_start=-0.1), r"bonus_start must be in \[0, 1\)"),
    (dict(bonus="cosine", bonus_start=0.3), r"bonus_start applies to bonus='log' and 'power'"),
    (dict(bonus="power", bonus_gamma=2, log_end=0.5), r"log_end shapes the log bonus only .* leave log_end out"),
    (dict(bonus_start=0.5, log_end=0.75), r"bonus_start > 0 with log_end < 1 is refused: the authors' formula .* jump"),
    (dict(bonus_smoothing=1.0), r"bonus_smoothing must be in \[0, 1\)"),
    (dict(bonus_smoothing=-0.1), r"bonus_smoothing must be in \[0, 1\)"),
])
def test_bad_bonus_values_say_what_is_allowed(kwargs, message):
    z, t = make_batch(0, n=6, v=5)
    for fn in (EF.encouraging_loss, EF.soft_target_encouraging_loss, EF.binary_encouraging_loss):
        target = t if fn is EF.encouraging_loss else torch.softmax(z, -1)
        with pytest.raises(ValueError, match=message):
            fn(z, target, **kwargs)


@pytest.mark.parametrize("kwargs,message", [
    (dict(schedule="linear"), r"bonus_schedule 'linear' needs its horizon: bonus_schedule_horizon"),
    (dict(schedule="warmup", horizon=3), r"bonus_schedule must be one of 'constant', 'linear', 'exp', 'cos'"),
    (dict(schedule="constant", horizon=3), r"bonus_schedule_horizon applies to a warm-up"),
    (dict(schedule="linear", horizon=0), r"bonus_schedule_horizon must be an integer >= 1"),
    (dict(schedule="linear", horizon=2.5), r"bonus_schedule_horizon must be an integer >= 1"),
    (dict(defer=-1), r"bonus_defer must be an integer >= 0"),
    (dict(schedule="exp", horizon=3, exp_ratio=0), r"bonus_schedule_exp_ratio must be a finite number other than 0"),
    (dict(schedule="linear", horizon=3, exp_ratio=2), r"bonus_schedule_exp_ratio applies to bonus_schedule 'exp' only"),
    (dict(unit="step"), r"bonus_schedule_unit must be one of 'epoch', 'update'"),
])
def test_bad_schedules_say_what_is_allowed(kwargs, message):
    with pytest.raises(ValueError, match=message):
        schedule_spec(**kwargs)


def test_names_are_the_callers_flags():
    with pytest.raises(ValueError, match=r"--bonus-gamma must be a finite number > 0 for --bonus='power'"):
        bonus_spec("power", None, names={"bonus_gamma": "--bonus-gamma", "bonus": "--bonus"})


def test_the_default_is_todays_loss():
    """bonus='log' without a start, log_end 0.75: what every earlier release computed (the spec's worked example)."""
    from el_evidence.testing import spec_example as spec

    for convention, log_end, rho, expected in spec.SUM_TABLE:
        z, t = spec.logits_and_targets()
        for implementation in ("reference", "fused"):
            got = EF.encouraging_loss(z, t, log_end=log_end, bonus_weight=rho, label_smoothing=spec.LABEL_SMOOTHING,
                                      ignore_index=spec.PADDING_INDEX, smoothing_convention=convention,
                                      reduction="sum", implementation=implementation)
            assert got.item() == pytest.approx(expected, abs=1e-10)

