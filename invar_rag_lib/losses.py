"""Stage-1 losses of Invar-RAG (docs/method.md §1), as pure torch functions.

Conventions shared by every function here:

* A batch holds ``B`` queries; query ``q`` has a group ``G(q)`` of ``G`` candidate passages,
  padded where needed. ``group_mask`` ``[B, G]`` is True for a real candidate. Every softmax
  ignores masked entries (probability exactly 0, log-probability ``-inf``) and every KL sums over
  real entries only.
* Environments come first: ``[E, B, G]``.
* All KL terms are computed in float32, detach the teacher, and follow ``batchmean`` semantics
  (sum over the distribution, mean over queries). The direction is always the spec's
  ``KL(teacher ‖ student) = Σ_d teacher(d) · (log teacher(d) − log student(d))``: the forward KL,
  which is mass-covering — the student is penalised wherever the teacher puts mass it misses.
  It equals ``F.kl_div(student_logp, teacher_logp, log_target=True, reduction="batchmean")`` on
  unpadded inputs; it is written out here because ``kl_div`` turns ``-inf − -inf`` on padded
  entries into NaN.
* Queries with fewer than 2 real entries have a KL of exactly 0 and no gradient (a distribution
  over one element is always 1). ``kl_to_student`` counts them in the mean only when asked to
  (``min_entries=1``, its default, per its contract); ``alignment_loss`` and ``invariance_loss``
  exclude them (``min_entries=2``) so the loss scale does not depend on how many degenerate
  groups a batch happens to contain. When no query qualifies, the loss is a zero that is still
  connected to the student's graph.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
_NEG_INF = float("-inf")


def contrastive_loss(q_reps: Tensor, p_reps: Tensor, positive_mask: Tensor, tau: float,
                     candidate_mask: Tensor | None = None) -> Tensor:
    """L_ctr = −log Σ_{d+} exp s(q,d+) / Σ_{d∈batch} exp s(q,d), with s(q,d) = q·d / tau.

    Shapes: ``q_reps`` [B, D]; ``p_reps`` [N, D], every passage of the batch (typically the B
    groups flattened, N = B·G); ``positive_mask`` [B, N] bool, True where passage n is a positive
    of query b; ``candidate_mask`` [B, N] bool or None. Returns a float32 scalar.

    The representations are used as given (the caller L2-normalises ``h``); ``tau`` is τ_r.
    Several positives enter the numerator as a sum (multi-positive InfoNCE, as written).
    The denominator is every passage of the batch (own group + in-batch negatives) unless
    ``candidate_mask`` removes it; a positive is always kept in the denominator, so the ratio
    stays ≤ 1 and the loss ≥ 0. Queries without any positive are excluded from the mean over
    queries; if no query has a positive the result is a zero connected to ``q_reps``/``p_reps``.
    """
    pos = positive_mask.bool()
    scores = (q_reps.float() @ p_reps.float().T) / tau                       # [B, N]
    denom_mask = torch.ones_like(pos) if candidate_mask is None else (candidate_mask.bool() | pos)
    has_pos = pos.any(dim=-1)                                                 # [B]
    # Rows without a positive get finite dummy logits so that logsumexp's backward stays NaN-free.
    num = scores.masked_fill(~pos, _NEG_INF).masked_fill(~has_pos[:, None], 0.0)
    den = scores.masked_fill(~denom_mask, _NEG_INF).masked_fill(~has_pos[:, None], 0.0)
    per_query = torch.logsumexp(den, dim=-1) - torch.logsumexp(num, dim=-1)   # [B]
    per_query = torch.where(has_pos, per_query, torch.zeros_like(per_query))
    return per_query.sum() / has_pos.sum().clamp(min=1)


def group_log_softmax(scores: Tensor, group_mask: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax_{d∈G(q)} (scores / temperature), over the last dimension.

    Shapes: ``scores`` [..., B, G] (e.g. [B, G] or [E, B, G]); ``group_mask`` broadcastable to it,
    typically [B, G]. Returns float32 log-probabilities of the same shape as ``scores``: masked
    entries are ``-inf`` (probability exactly 0) and receive exactly zero gradient. A row with no
    real entry is all ``-inf`` (no NaN, forward or backward).
    """
    mask = group_mask.bool()
    x = scores.float() / temperature
    x = x.masked_fill(~mask, _NEG_INF)
    x = x.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)   # empty rows: finite dummies
    return F.log_softmax(x, dim=-1).masked_fill(~mask, _NEG_INF)


def kl_to_student(teacher_logp: Tensor, student_logp: Tensor, mask: Tensor,
                  min_entries: int = 1) -> Tensor:
    """KL(teacher ‖ student) = Σ_{real d} p_t(d) · (log p_t(d) − log p_s(d)), batch-averaged.

    Shapes: ``teacher_logp``, ``student_logp`` [B, G] log-probabilities (already normalised over
    the real entries, e.g. from :func:`group_log_softmax`); ``mask`` [B, G] bool. Returns a
    float32 scalar: the per-query KL averaged over queries with at least ``min_entries`` real
    entries (default 1, i.e. every non-empty query; a 1-entry query contributes 0).

    Direction: forward KL with the teacher as the reference measure (the spec's ``KL(P ‖ Q)``
    with P the teacher), equal to ``F.kl_div(student_logp, teacher_logp, log_target=True,
    reduction="batchmean")`` on unpadded inputs. The teacher is detached inside: it is a
    target, so gradients flow only into the student. Masked entries are zeroed before any
    arithmetic, so their (-inf) values never produce NaN and get exactly zero gradient.
    """
    mask = mask.bool()
    t = teacher_logp.detach().float().masked_fill(~mask, 0.0)
    s = student_logp.float().masked_fill(~mask, 0.0)
    tp = t.exp() * mask
    # 0 · log 0 = 0 for a real entry that the teacher gives zero probability.
    terms = torch.where(tp > 0, tp * (t - s), torch.zeros_like(s))
    per_query = terms.sum(dim=-1)                                             # [B]
    valid = mask.sum(dim=-1) >= max(min_entries, 1)
    per_query = torch.where(valid, per_query, torch.zeros_like(per_query))
    return per_query.sum() / valid.sum().clamp(min=1)


def alignment_loss(coarse_scores: Tensor, student_scores: Tensor, group_mask: Tensor,
                   tau_c: float) -> Tensor:
    """L_align = KL(P_c ‖ P_θ) over G(q): MiniLM teacher, retriever student.

    Shapes: ``coarse_scores`` [B, G] = s_c(q, d) (MiniLM cosine); ``student_scores`` [B, G] =
    s_θ(q, d), which already includes the retriever's 1/τ_r; ``group_mask`` [B, G].
    P_c = softmax(s_c / τ_c), P_θ = softmax(s_θ), both over the real candidates of G(q).
    Direction KL(P_c ‖ P_θ) as in the spec: the global, whole-passage MiniLM view is the
    reference, and the LLM retriever is penalised wherever it misses MiniLM's mass. P_c is
    detached. Float32 scalar, averaged over queries with ≥ 2 real candidates (see module doc).
    """
    teacher = group_log_softmax(coarse_scores, group_mask, temperature=tau_c)
    student = group_log_softmax(student_scores, group_mask)
    return kl_to_student(teacher, student, group_mask, min_entries=2)


def lsr_distribution(answer_logliks: Tensor, group_mask: Tensor, beta: float) -> Tensor:
    """log Q(d|q) = log softmax_{d∈G(q)} ℓ(d) / β (REPLUG LM-supervised retrieval target).

    Shapes: ``answer_logliks`` [B, G] or [E, B, G] (mean answer-token log-likelihood per
    passage and environment); ``group_mask`` [B, G]. Returns float32 log Q, same shape,
    ``-inf`` on masked entries.
    """
    return group_log_softmax(answer_logliks, group_mask, temperature=beta)


def invariant_mask(lsr_logq: Tensor, group_mask: Tensor, rel_tol: float = 1e-6) -> Tensor:
    """I(q): passages whose usefulness agrees across all environments.

    Shapes: ``lsr_logq`` [E, B, G] (log Q_e); ``group_mask`` [B, G]. Returns bool [B, G].
    A passage is *useful* in e when Q_e(d|q) > 1/|G(q)|, |G(q)| = number of real candidates of
    q; it is invariant when useful in every environment or in none. Masked entries are False.
    The comparison runs in float64 with the threshold raised by a relative ``rel_tol``, so a
    probability equal to 1/|G(q)| up to float32 rounding (e.g. a uniform Q_e) counts as *not*
    useful, as the strict ``>`` intends, instead of flipping on rounding noise.
    """
    mask = group_mask.bool()
    q = lsr_logq.detach().double().exp()                                      # [E, B, G]
    n = mask.sum(dim=-1, keepdim=True).double()                                # [B, 1]
    useful = (q > (1.0 + rel_tol) / n) & mask
    return (useful.all(dim=0) | (~useful).all(dim=0)) & mask


def invariance_target(lsr_logq: Tensor, inv_mask: Tensor) -> Tensor:
    """log Q*(d|q), Q* ∝ exp(mean_e log Q_e(d|q)) restricted to I(q) and renormalised.

    Shapes: ``lsr_logq`` [E, B, G]; ``inv_mask`` [B, G] (from :func:`invariant_mask`).
    Returns float32 [B, G]: the normalised geometric mean of the environments' distributions
    over I(q), ``-inf`` outside I(q) (all ``-inf`` for a query whose I(q) is empty).
    """
    inv = inv_mask.bool()
    mean_logq = lsr_logq.float().masked_fill(~inv, 0.0).mean(dim=0)          # [B, G]
    return group_log_softmax(mean_logq, inv)


def invariance_loss(student_scores_env: Tensor, lsr_logq: Tensor, group_mask: Tensor,
                    gamma: float) -> tuple[Tensor, dict]:
    """L_inv = mean_e KL_e + γ · Var_e KL_e, KL_e = KL(Q*|_I ‖ P_θ^e|_I) (V-REx style).

    Shapes: ``student_scores_env`` [E, B, G] = s_θ(q, d) computed in environment e (1/τ_r
    included); ``lsr_logq`` [E, B, G] = log Q_e; ``group_mask`` [B, G].
    P_θ^e|_I = softmax over I(q) of the scores of environment e; Q*|_I from
    :func:`invariance_target`. Direction KL(Q* ‖ P_θ^e): the LM-derived invariant target is the
    reference (forward KL, as for REPLUG-LSR), so the retriever must cover the passages that
    help the LM in every environment. Variant passages are outside both distributions, so they
    get exactly zero gradient ("never pull the retriever"). Q* is detached.

    KL_e is a float32 batch mean over queries with |I(q)| ≥ 2: a KL over a single passage is
    0, so smaller I(q) contribute nothing and are excluded from the mean. Var_e is the
    population variance over the E environments (``correction=0``): the environments are the
    whole set being penalised, not a sample, as in V-REx; with E = 1 it is 0.

    Returns ``(loss, diagnostics)``, diagnostics holding detached Python numbers:
    ``kl_env`` (list of E floats), ``kl_mean``, ``kl_var``, ``inv_share`` (share of real
    candidates that are invariant) and ``n_queries`` (queries with |I(q)| ≥ 2).
    """
    mask = group_mask.bool()
    inv = invariant_mask(lsr_logq, mask)
    target = invariance_target(lsr_logq, inv)
    kls = torch.stack([
        kl_to_student(target, group_log_softmax(student_scores_env[e], inv), inv, min_entries=2)
        for e in range(student_scores_env.shape[0])
    ])                                                                         # [E]
    kl_mean = kls.mean()
    kl_var = kls.var(correction=0)
    loss = kl_mean + gamma * kl_var
    n_real = int(mask.sum())
    diagnostics = {
        "kl_env": [float(v) for v in kls.detach()],
        "kl_mean": float(kl_mean.detach()),
        "kl_var": float(kl_var.detach()),
        "inv_share": float(inv.sum()) / n_real if n_real else 0.0,
        "n_queries": int((inv.sum(dim=-1) >= 2).sum()),
    }
    return loss, diagnostics
