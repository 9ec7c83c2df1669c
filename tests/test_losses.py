"""Stage-1 losses (docs/method.md §1): values by hand, KL direction, masking, gradients, invariance."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from invar_rag_lib.losses import (alignment_loss, contrastive_loss, group_log_softmax,
                                  invariance_loss, invariance_target, invariant_mask,
                                  kl_to_student, lsr_distribution)

ATOL = 1e-6


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def kl_hand(p, q) -> float:
    """Σ p log(p/q) over plain Python lists."""
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def logits_of(probs) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float64).log().float()


# --------------------------------------------------------------------------------------------
# Every KL function, seen through one adapter: (teacher_logits, student_logits, mask) -> scalar.
# The teacher's distribution is softmax(teacher_logits) over the real entries, the student's
# softmax(student_logits); each adapter must return batchmean KL(teacher ‖ student).
def _kl_direct(t, s, m):
    return kl_to_student(group_log_softmax(t, m), group_log_softmax(s, m), m)


def _kl_align(t, s, m):
    return alignment_loss(t * 0.5, s, m, tau_c=0.5)          # s_c / τ_c == t exactly


def _kl_inv(t, s, m):
    # Two identical environments: every passage is invariant, Q* = Q, Var = 0, so the
    # loss is KL(Q ‖ P_θ) whatever γ is.
    lsr = lsr_distribution(torch.stack([t, t]), m, beta=1.0)
    loss, _ = invariance_loss(torch.stack([s, s]), lsr, m, gamma=1.0)
    return loss


KL_FNS = pytest.mark.parametrize("kl_fn", [_kl_direct, _kl_align, _kl_inv],
                                 ids=["kl_to_student", "alignment", "invariance"])


@KL_FNS
def test_kl_nonnegative_on_random_inputs(kl_fn):
    g = gen(1)
    for _ in range(5):
        t, s = torch.randn(4, 5, generator=g) * 3, torch.randn(4, 5, generator=g) * 3
        mask = torch.ones(4, 5, dtype=torch.bool)
        mask[1, 3:] = False
        mask[3, 0] = False
        assert kl_fn(t, s, mask).item() >= 0.0


@KL_FNS
def test_kl_zero_on_identical_distributions(kl_fn):
    t = torch.randn(3, 4, generator=gen(2))
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[2, -1] = False
    assert abs(kl_fn(t, t.clone(), mask).item()) < ATOL
    # A constant shift of the logits is the same distribution.
    assert abs(kl_fn(t, t + 7.0, mask).item()) < ATOL


@KL_FNS
def test_kl_gradient_flows_only_to_student(kl_fn):
    t = torch.randn(2, 4, generator=gen(3)).requires_grad_(True)
    s = torch.randn(2, 4, generator=gen(4)).requires_grad_(True)
    kl_fn(t, s, torch.ones(2, 4, dtype=torch.bool)).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


P1, P2 = [0.5, 0.5], [0.25, 0.75]      # teacher rows
Q1, Q2 = [0.25, 0.75], [0.5, 0.5]      # student rows


@KL_FNS
def test_kl_matches_hand_computation(kl_fn):
    t = logits_of([P1, P2])
    s = logits_of([Q1, Q2])
    expected = (0.5 * math.log(2) + 0.5 * math.log(2 / 3)
                + 0.25 * math.log(0.5) + 0.75 * math.log(1.5)) / 2
    assert expected == pytest.approx((kl_hand(P1, Q1) + kl_hand(P2, Q2)) / 2)
    got = kl_fn(t, s, torch.ones(2, 2, dtype=torch.bool))
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, abs=ATOL)


@KL_FNS
def test_kl_ignores_masked_junk_column(kl_fn):
    t = torch.randn(2, 3, generator=gen(5))
    s = torch.randn(2, 3, generator=gen(6))
    mask = torch.ones(2, 3, dtype=torch.bool)
    base = kl_fn(t, s, mask)
    junk_t = torch.cat([t, torch.tensor([[1e4], [-1e4]])], dim=1)
    junk_s = torch.cat([s, torch.tensor([[-1e4], [1e4]])], dim=1)
    junk_mask = torch.cat([mask, torch.zeros(2, 1, dtype=torch.bool)], dim=1)
    padded = kl_fn(junk_t, junk_s, junk_mask)
    assert torch.isfinite(padded)
    assert padded.item() == pytest.approx(base.item(), abs=ATOL)


@KL_FNS
def test_kl_direction_is_teacher_to_student(kl_fn):
    p, q = [0.9, 0.1], [0.5, 0.5]
    forward, reverse = kl_hand(p, q), kl_hand(q, p)
    assert abs(forward - reverse) > 0.1                     # the example is asymmetric
    mask = torch.ones(1, 2, dtype=torch.bool)
    got = kl_fn(logits_of([p]), logits_of([q]), mask).item()
    assert got == pytest.approx(forward, abs=ATOL)
    assert got != pytest.approx(reverse, abs=1e-3)


def test_kl_to_student_equals_torch_kl_div_batchmean():
    g = gen(7)
    t = F.log_softmax(torch.randn(5, 6, generator=g), -1)
    s = F.log_softmax(torch.randn(5, 6, generator=g), -1)
    ref = F.kl_div(s, t, log_target=True, reduction="batchmean")
    got = kl_to_student(t, s, torch.ones(5, 6, dtype=torch.bool))
    assert got.item() == pytest.approx(ref.item(), abs=ATOL)


def test_kl_in_float32_from_low_precision_inputs():
    t = torch.randn(2, 3, generator=gen(8), dtype=torch.float64)
    s = torch.randn(2, 3, generator=gen(9)).to(torch.bfloat16).requires_grad_(True)
    mask = torch.ones(2, 3, dtype=torch.bool)
    out = alignment_loss(t, s, mask, tau_c=0.1)
    assert out.dtype == torch.float32
    out.backward()
    assert s.grad.dtype == torch.bfloat16


def test_alignment_uses_tau_c_on_teacher_only():
    s_c = torch.tensor([[0.8, 0.6, 0.2], [0.1, 0.5, 0.3]])
    s_theta = torch.tensor([[10.0, 12.0, 9.0], [30.0, 31.0, 29.0]])   # already / τ_r
    tau_c = 0.05

    def softmax(xs):
        z = sum(math.exp(x) for x in xs)
        return [math.exp(x) / z for x in xs]

    expected = sum(kl_hand(softmax([x / tau_c for x in c]), softmax(list(t)))
                   for c, t in zip(s_c.tolist(), s_theta.tolist())) / 2
    got = alignment_loss(s_c, s_theta, torch.ones(2, 3, dtype=torch.bool), tau_c)
    assert got.item() == pytest.approx(expected, abs=1e-5)


def test_degenerate_groups():
    t = torch.randn(2, 3, generator=gen(10))
    s = torch.randn(2, 3, generator=gen(11))
    mask = torch.tensor([[True, True, True], [True, False, False]])   # query 2: one candidate
    only_first = kl_to_student(group_log_softmax(t[:1], mask[:1]),
                               group_log_softmax(s[:1], mask[:1]), mask[:1])
    # kl_to_student (min_entries=1) averages over both non-empty queries; the 1-candidate KL is 0.
    both = kl_to_student(group_log_softmax(t, mask), group_log_softmax(s, mask), mask)
    assert both.item() == pytest.approx(only_first.item() / 2, abs=ATOL)
    # alignment excludes queries with < 2 candidates from the mean.
    assert alignment_loss(t, s, mask, 1.0).item() == pytest.approx(only_first.item(), abs=ATOL)
    # Nothing qualifies: a connected zero.
    s_leaf = s.clone().requires_grad_(True)
    none = alignment_loss(t, s_leaf, torch.tensor([[True, False, False], [False] * 3]), 1.0)
    assert none.item() == 0.0 and none.grad_fn is not None
    none.backward()
    assert torch.equal(s_leaf.grad, torch.zeros_like(s))


# --------------------------------------------------------------------------------------------
def test_group_log_softmax_masks_exactly():
    scores = torch.tensor([[1.0, 2.0, 1e6], [0.0, 0.0, 0.0], [5.0, 5.0, 5.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, True], [False, False, False]])
    logp = group_log_softmax(scores, mask, temperature=2.0)
    p = logp.exp()
    assert p[0, 2].item() == 0.0 and torch.isneginf(logp[0, 2])
    assert torch.all(torch.isneginf(logp[2]))                         # empty row, no NaN
    assert p[:2].sum(-1).tolist() == pytest.approx([1.0, 1.0], abs=ATOL)
    assert logp[0, 1].item() == pytest.approx(0.5 - math.log(math.exp(0.5) + 1), abs=ATOL)
    logp[mask].sum().backward()
    assert torch.isfinite(scores.grad).all() and scores.grad[0, 2].item() == 0.0


def test_lsr_distribution_is_log_softmax_over_beta():
    ell = torch.randn(3, 2, 4, generator=gen(12))
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[1, 0] = False
    out = lsr_distribution(ell, mask, beta=0.7)
    assert out.shape == (3, 2, 4)
    assert torch.allclose(out[:, 0], F.log_softmax(ell[:, 0] / 0.7, -1), atol=ATOL)
    assert torch.allclose(out[:, 1, 1:], F.log_softmax(ell[:, 1, 1:] / 0.7, -1), atol=ATOL)
    assert torch.all(torch.isneginf(out[:, 1, 0]))


# --------------------------------------------------------------------------------------------
def _s(q, p, tau):
    return sum(a * b for a, b in zip(q, p)) / tau


def test_contrastive_matches_hand_computation_with_in_batch_negatives():
    q = [[1.0, 0.0], [0.6, 0.8]]
    p = [[0.8, 0.6], [0.0, 1.0], [1.0, 0.0], [0.6, -0.8]]   # groups: q1 -> p0,p1; q2 -> p2,p3
    pos = [[True, False, False, False], [False, False, True, True]]
    tau = 0.5
    expected = 0.0
    for qi, row in zip(q, pos):
        num = sum(math.exp(_s(qi, pj, tau)) for pj, r in zip(p, row) if r)
        den = sum(math.exp(_s(qi, pj, tau)) for pj in p)
        expected += -math.log(num / den)
    expected /= 2
    got = contrastive_loss(torch.tensor(q), torch.tensor(p), torch.tensor(pos), tau)
    assert got.item() == pytest.approx(expected, abs=1e-5)
    # Restricting the denominator to the own group drops the in-batch negatives: a lower loss.
    own = torch.tensor([[True, True, False, False], [False, False, True, True]])
    own_only = contrastive_loss(torch.tensor(q), torch.tensor(p), torch.tensor(pos), tau, own)
    assert own_only.item() < got.item() - 1e-3


def test_contrastive_in_batch_negative_raises_loss():
    q = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[0.9, 0.1], [0.0, 1.0]])
    pos = torch.tensor([[True, False]])
    base = contrastive_loss(q, p, pos, 0.1)
    # Another query's passage, close to q, joins the batch: it must enter the denominator.
    p2 = torch.cat([p, torch.tensor([[0.95, 0.0]])])
    pos2 = torch.tensor([[True, False, False]])
    assert contrastive_loss(q, p2, pos2, 0.1).item() > base.item() + 0.1


def test_contrastive_better_aligned_positive_lowers_loss():
    q = torch.tensor([[1.0, 0.0]])
    neg = torch.tensor([[0.0, 1.0]])
    pos = torch.tensor([[True, False]])
    weak = contrastive_loss(q, torch.cat([torch.tensor([[0.5, 0.5]]), neg]), pos, 0.2)
    strong = contrastive_loss(q, torch.cat([torch.tensor([[0.9, 0.1]]), neg]), pos, 0.2)
    assert strong.item() < weak.item()


def test_contrastive_query_without_positive_is_excluded():
    g = gen(13)
    q = torch.randn(2, 4, generator=g)
    p = torch.randn(4, 4, generator=g)
    pos = torch.tensor([[True, False, False, False], [False, False, False, False]])
    both = contrastive_loss(q, p, pos, 0.1)
    first = contrastive_loss(q[:1], p, pos[:1], 0.1)
    assert both.item() == pytest.approx(first.item(), abs=1e-5)
    q_leaf = q.clone().requires_grad_(True)
    none = contrastive_loss(q_leaf, p, torch.zeros(2, 4, dtype=torch.bool), 0.1)
    assert none.item() == 0.0 and none.grad_fn is not None
    none.backward()
    assert torch.equal(q_leaf.grad, torch.zeros_like(q))


def test_contrastive_gradients_finite_with_candidate_mask():
    g = gen(14)
    q = torch.randn(3, 4, generator=g, requires_grad=True)
    p = torch.randn(6, 4, generator=g, requires_grad=True)
    pos = torch.zeros(3, 6, dtype=torch.bool)
    pos[0, 0] = pos[1, 2] = True
    cand = torch.zeros(3, 6, dtype=torch.bool)
    cand[:, :4] = True
    contrastive_loss(q, p, pos, 0.05, cand).backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(p.grad).all()
    assert torch.equal(q.grad[2], torch.zeros(4))           # no positive: no gradient
    assert torch.equal(p.grad[4:], torch.zeros(2, 4))       # never a candidate


# --------------------------------------------------------------------------------------------
# Hand-made LSR distributions, 3 environments, query 1 with 4 real candidates + 1 pad,
# query 2 with 3 real candidates + 2 pads.
Q_ENV = [
    [[0.40, 0.10, 0.40, 0.10, 0.0], [0.30, 0.20, 0.50, 0.0, 0.0]],
    [[0.45, 0.10, 0.10, 0.35, 0.0], [0.30, 0.20, 0.50, 0.0, 0.0]],
    [[0.50, 0.05, 0.30, 0.15, 0.0], [0.50, 0.10, 0.40, 0.0, 0.0]],
]
MASK = torch.tensor([[True, True, True, True, False], [True, True, True, False, False]])
# q1 (|G| = 4, threshold 0.25): p0 useful everywhere, p1 nowhere -> invariant; p2 (yes, no, yes)
# and p3 (no, yes, no) -> variant. q2 (|G| = 3, threshold 1/3): p0 (no, no, yes) -> variant
# (with the padded size 5, threshold 0.2, it would be useful everywhere); p1 nowhere, p2
# everywhere -> invariant.
EXPECTED_INV = [[True, True, False, False, False], [False, True, True, False, False]]


def q_env_logq() -> torch.Tensor:
    return torch.tensor(Q_ENV, dtype=torch.float64).log().float()


def test_invariant_mask_hand_example():
    assert invariant_mask(q_env_logq(), MASK).tolist() == EXPECTED_INV


def test_invariant_mask_uniform_counts_as_useful_nowhere():
    logq = lsr_distribution(torch.zeros(3, 1, 3), torch.ones(1, 3, dtype=torch.bool), beta=1.0)
    assert invariant_mask(logq, torch.ones(1, 3, dtype=torch.bool)).tolist() == [[True] * 3]


def test_invariance_target_is_renormalised_geometric_mean():
    logq = q_env_logq()
    inv = torch.tensor(EXPECTED_INV)
    target = invariance_target(logq, inv)
    p = target.exp()
    for b in range(2):
        idx = [g for g in range(5) if EXPECTED_INV[b][g]]
        geo = {g: math.prod(Q_ENV[e][b][g] for e in range(3)) ** (1 / 3) for g in idx}
        z = sum(geo.values())
        for g in range(5):
            if g in geo:
                assert p[b, g].item() == pytest.approx(geo[g] / z, abs=ATOL)
            else:
                assert p[b, g].item() == 0.0 and torch.isneginf(target[b, g])
        assert p[b].sum().item() == pytest.approx(1.0, abs=ATOL)


def test_invariance_loss_zero_when_student_matches_target_in_every_env():
    logq = q_env_logq()
    target = invariance_target(logq, invariant_mask(logq, MASK))
    inv = torch.tensor(EXPECTED_INV)
    junk = torch.randn(3, 2, 5, generator=gen(15)) * 100        # variant / pad scores: anything
    student = torch.where(inv, target.masked_fill(~inv, 0.0) + 3.0, junk)
    loss, diag = invariance_loss(student, logq, MASK, gamma=1.0)
    assert abs(loss.item()) < ATOL
    assert diag["kl_env"] == pytest.approx([0.0] * 3, abs=ATOL)
    assert diag["kl_var"] == pytest.approx(0.0, abs=ATOL)
    assert diag["inv_share"] == pytest.approx(4 / 7)
    assert diag["n_queries"] == 2


def test_invariance_variance_term_grows_with_env_disagreement():
    logq = q_env_logq()
    agree = torch.randn(1, 2, 5, generator=gen(16)).expand(3, 2, 5).clone()
    disagree = agree.clone()
    disagree[1, :, :3] += torch.tensor([2.0, -1.0, 0.5])
    disagree[2, :, :3] -= torch.tensor([1.0, 3.0, -2.0])
    l0_agree, d_agree = invariance_loss(agree, logq, MASK, gamma=0.0)
    l1_agree, _ = invariance_loss(agree, logq, MASK, gamma=1.0)
    assert d_agree["kl_var"] == pytest.approx(0.0, abs=ATOL)
    assert l1_agree.item() == pytest.approx(l0_agree.item(), abs=ATOL)
    l0, d = invariance_loss(disagree, logq, MASK, gamma=0.0)
    l1, _ = invariance_loss(disagree, logq, MASK, gamma=1.0)
    kl = torch.tensor(d["kl_env"])
    assert d["kl_var"] > 1e-3
    assert d["kl_var"] == pytest.approx(kl.var(unbiased=False).item(), abs=ATOL)   # population
    assert l0.item() == pytest.approx(kl.mean().item(), abs=ATOL)
    assert l1.item() - l0.item() == pytest.approx(d["kl_var"], abs=ATOL)


def test_invariance_gradients_only_to_student_and_invariant_passages():
    logq = q_env_logq().requires_grad_(True)
    student = torch.randn(3, 2, 5, generator=gen(17)).requires_grad_(True)
    loss, _ = invariance_loss(student, logq, MASK, gamma=1.0)
    loss.backward()
    assert logq.grad is None
    inv = torch.tensor(EXPECTED_INV).expand(3, 2, 5)
    assert torch.all(student.grad[~inv] == 0.0)             # variant and padded: exactly zero
    assert torch.all(student.grad[inv].abs() > 0)


def test_invariance_small_invariant_sets_contribute_nothing():
    # Query 1 as above; query 2 replaced by one whose I(q) is a single passage.
    q2 = [[0.5, 0.2, 0.3], [0.3, 0.2, 0.5], [0.4, 0.2, 0.4]]   # p1 nowhere, p0/p2 variant
    rows = [[Q_ENV[e][0], q2[e] + [0.0, 0.0]] for e in range(3)]
    logq = torch.tensor(rows, dtype=torch.float64).log().float()
    student = torch.randn(3, 2, 5, generator=gen(18)).requires_grad_(True)
    loss, diag = invariance_loss(student, logq, MASK, gamma=0.5)
    only_q1, _ = invariance_loss(student[:, :1], logq[:, :1], MASK[:1], gamma=0.5)
    assert diag["n_queries"] == 1
    assert loss.item() == pytest.approx(only_q1.item(), abs=ATOL)
    loss.backward()
    assert torch.equal(student.grad[:, 1], torch.zeros(3, 5))
