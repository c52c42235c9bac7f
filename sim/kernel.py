"""The behaviour kernel: one day of every listed user's life.  The only place
where daily dynamics live.

Both the fast cohort agents and the one-agent-per-user inspection mode call
:func:`step_rows` (or its serial twin) on a set of row positions; a user's day
depends only on that user's own state, traits, granted action and keyed random
draws, so the two modes agree exactly.

Order of events on day ``t`` for a user still installed:

1. the grant authorised for today (if any) takes effect (a sleeping dog may
   uninstall on the spot);
2. coins and unlocks past their expiry lapse (unredeemed value costs nothing);
3. the user opens the app with probability sigmoid(logit), where logit =
   habit + learning * min(active days, cap) + momentum * [active yesterday]
   - novelty_decay * log(1 + t) - ad_annoyance * (1 - ad_tolerance) * [ads shown]
   + incentive boosts (decaying, saturating with repetition);
4. if open: reading minutes and chapters; unlocked premium chapters are read
   first (royalty cost); ad impressions earn ad revenue, or, during a trial,
   are forgone (trial cost); coins are redeemed while reading (coin cost;
   subsidy hunters cash out at once); a payment may happen, cannibalised by
   active incentives;
5. a trial that ends today may convert to a paid membership;
6. the user may uninstall (permanent churn): high hazard on inactive days,
   and for subsidy hunters who have cashed out.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from sim import rng as R
from sim.catalogue import TYPE_COINS, TYPE_TRIAL, TYPE_UNLOCK
from sim.population import (
    SEG_DOG,
    SEG_HUNTER,
    T_ADTOL,
    T_BINGE,
    T_HABIT,
    T_MINMU,
    T_PAYPROP,
    T_RC,
    T_RM,
    T_RU,
)
from sim.scenario import Scenario

# ---- float state rows -----------------------------------------------------
(
    F_COINS,  # unredeemed coin balance (yuan)
    F_COIN_POT,  # coins granted in the live grant (sets the redemption pace)
    F_COIN_BOOST,  # log-odds boost of the live coin grant at grant time
    F_TRIAL_BOOST,
    F_UNLOCK_BOOST,
    F_REVENUE,  # cumulative revenue (ads + payments)
    F_ADREV,
    F_PAYREV,
    F_COST,  # cumulative realised subsidy cost
    F_COST_COINS,
    F_COST_TRIAL,
    F_COST_UNLOCK,
    F_MINUTES,
    F_P_D1,  # P(open on day 1 | state that morning): Rao-Blackwellised retention, for truth only
    F_P_D7,
    F_P_D14,
    F_P_D30,
) = range(17)
N_F = 17
P_DAYS = (1, 7, 14, 30)

# ---- int state rows -------------------------------------------------------
(
    I_ALIVE,
    I_DAYS_ACTIVE,
    I_LAST_ACTIVE,
    I_COIN_DAY,
    I_TRIAL_START,
    I_TRIAL_END,  # exclusive: ad-free on days < TRIAL_END
    I_TRIAL_ACTIVE,
    I_UNLOCK_LEFT,
    I_UNLOCK_DAY,
    I_N_COINS,
    I_N_TRIAL,
    I_N_UNLOCK,
    I_MEMBER_UNTIL,  # exclusive
    I_FIRST_PAY_DAY,
    I_N_PAYMENTS,
    I_CHAPTERS,
    I_LAST_ACTION,
    I_LAST_GRANT_DAY,
    I_CASHED_OUT,
    I_CHURN_DAY,
    I_PENDING,  # action authorised for today
) = range(21)
N_I = 21

# ---- parameters -----------------------------------------------------------
PARAM_NAMES = (
    "momentum",
    "learning",
    "learning_cap_days",
    "novelty_decay",
    "churn_if_inactive",
    "churn_if_active",
    "ad_annoyance",
    "minutes_log_sd",
    "max_minutes",
    "minutes_per_chapter",
    "premium_chapter_share",
    "ad_impressions_per_minute",
    "ad_daily_cap_impressions",
    "ecpm_yuan",
    "pay_logit_base",
    "pay_logit_per_log_active_day",
    "membership_share_of_payments",
    "membership_price",
    "membership_days",
    "chapter_bundle_price",
    "royalty_per_chapter",
    "coin_effect",
    "coin_decay_days",
    "coin_expiry_days",
    "minutes_to_redeem_all",
    "coin_cannibalisation",
    "hunter_effect",
    "hunter_churn_after_cashout",
    "trial_effect",
    "trial_conversion_logit_base",
    "trial_conversion_per_active_share",
    "trial_conversion_per_pay_propensity",
    "trial_cannibalisation",
    "unlock_effect",
    "unlock_decay_days",
    "unlock_expiry_days",
    "unlock_cannibalisation",
    "saturation",
    "sleeping_dog_churn_bump",
)
P = {n: i for i, n in enumerate(PARAM_NAMES)}
(
    K_MOMENTUM, K_LEARNING, K_LEARN_CAP, K_NOVELTY, K_CHURN_INACT, K_CHURN_ACT, K_AD_ANNOY, K_MIN_SD,
    K_MAX_MIN, K_MPC, K_PREMIUM, K_IPM, K_IMP_CAP, K_ECPM, K_PAY_BASE, K_PAY_ACT, K_MEMB_SHARE, K_MEMB_PRICE,
    K_MEMB_DAYS, K_CH_PRICE, K_ROYALTY, K_COIN_EFF, K_COIN_DECAY, K_COIN_EXP, K_REDEEM_MIN, K_COIN_CANN,
    K_HUNTER_EFF, K_HUNTER_CHURN, K_TRIAL_EFF, K_CONV_BASE, K_CONV_SHARE, K_CONV_PAY, K_TRIAL_CANN, K_UNLOCK_EFF,
    K_UNLOCK_DECAY, K_UNLOCK_EXP, K_UNLOCK_CANN, K_SAT, K_DOG_BUMP,
) = range(len(PARAM_NAMES))


def params_from_scenario(sc: Scenario) -> np.ndarray:
    b, e, inc = sc.behaviour, sc.economy, sc.incentives
    c, m, u = inc.coins, inc.membership_trial, inc.chapter_unlock
    vals = dict(
        momentum=b.momentum, learning=b.learning, learning_cap_days=b.learning_cap_days,
        novelty_decay=b.novelty_decay, churn_if_inactive=b.churn_if_inactive, churn_if_active=b.churn_if_active,
        ad_annoyance=b.ad_annoyance, minutes_log_sd=b.minutes_log_sd, max_minutes=b.max_minutes,
        minutes_per_chapter=b.minutes_per_chapter, premium_chapter_share=b.premium_chapter_share,
        ad_impressions_per_minute=e.ad_impressions_per_minute, ad_daily_cap_impressions=e.ad_daily_cap_impressions,
        ecpm_yuan=e.ecpm_yuan, pay_logit_base=e.pay_logit_base,
        pay_logit_per_log_active_day=e.pay_logit_per_log_active_day,
        membership_share_of_payments=e.membership_share_of_payments, membership_price=e.membership_price,
        membership_days=e.membership_days, chapter_bundle_price=e.chapter_bundle_price,
        royalty_per_chapter=e.royalty_per_chapter, coin_effect=c.effect, coin_decay_days=c.decay_days,
        coin_expiry_days=c.expiry_days, minutes_to_redeem_all=c.minutes_to_redeem_all,
        coin_cannibalisation=c.payment_cannibalisation, hunter_effect=c.hunter_effect,
        hunter_churn_after_cashout=c.hunter_churn_after_cashout, trial_effect=m.effect,
        trial_conversion_logit_base=m.conversion_logit_base,
        trial_conversion_per_active_share=m.conversion_per_active_share,
        trial_conversion_per_pay_propensity=m.conversion_per_pay_propensity,
        trial_cannibalisation=m.payment_cannibalisation, unlock_effect=u.effect, unlock_decay_days=u.decay_days,
        unlock_expiry_days=u.expiry_days, unlock_cannibalisation=u.payment_cannibalisation,
        saturation=inc.saturation, sleeping_dog_churn_bump=inc.sleeping_dog_churn_bump,
    )
    return np.array([float(vals[n]) for n in PARAM_NAMES], dtype=np.float64)


def new_state(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fresh per-user state for ``n`` users on install day."""
    F = np.zeros((N_F, n), dtype=np.float64)
    I = np.zeros((N_I, n), dtype=np.int32)  # noqa: E741
    I[I_ALIVE] = 1
    I[I_FIRST_PAY_DAY] = -1
    I[I_CHURN_DAY] = -1
    I[I_LAST_GRANT_DAY] = -1
    I[I_LAST_ACTIVE] = 0  # day 0 = install day, the user was active
    I[I_COIN_DAY] = -1000
    I[I_UNLOCK_DAY] = -1000
    mask = np.ones(n, dtype=np.int64)  # bit 0: active on install day
    return F, I, mask


@njit(inline="always", cache=True)
def _sig(x):
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


@njit(inline="always", cache=True)
def _level_effect(kind, level):
    # concave in the level; normalised to 1 at the reference level
    if kind == 1:  # coins, reference 1 yuan
        return math.log1p(level / 0.5) / math.log1p(2.0)
    if kind == 3:  # unlock, reference 5 chapters
        return math.log1p(level / 5.0) / math.log(2.0)
    return 1.0


@njit(inline="always", cache=True)
def _user_day(j, uid, t, key, p, cat_type, cat_level, traits, seg, F, I, mask):
    if I[I_ALIVE, j] == 0:
        I[I_PENDING, j] = 0
        return
    s = seg[j]
    # 1. grant
    a = I[I_PENDING, j]
    if a > 0:
        I[I_PENDING, j] = 0
        kind = cat_type[a]
        level = cat_level[a]
        I[I_LAST_ACTION, j] = a
        I[I_LAST_GRANT_DAY, j] = t
        if kind == TYPE_COINS:
            sat = 1.0 / (1.0 + p[K_SAT] * I[I_N_COINS, j])
            F[F_COINS, j] += level
            F[F_COIN_POT, j] = F[F_COINS, j]
            I[I_COIN_DAY, j] = t
            if s == SEG_HUNTER:
                F[F_COIN_BOOST, j] = p[K_HUNTER_EFF] * sat
            else:
                F[F_COIN_BOOST, j] = p[K_COIN_EFF] * traits[T_RC, j] * _level_effect(1, level) * sat
            I[I_N_COINS, j] += 1
        elif kind == TYPE_TRIAL:
            sat = 1.0 / (1.0 + p[K_SAT] * I[I_N_TRIAL, j])
            if I[I_TRIAL_END, j] <= t:
                I[I_TRIAL_START, j] = t
                I[I_TRIAL_ACTIVE, j] = 0
            I[I_TRIAL_END, j] = max(I[I_TRIAL_END, j], t + int(level))
            F[F_TRIAL_BOOST, j] = p[K_TRIAL_EFF] * traits[T_RM, j] * sat
            I[I_N_TRIAL, j] += 1
        elif kind == TYPE_UNLOCK:
            sat = 1.0 / (1.0 + p[K_SAT] * I[I_N_UNLOCK, j])
            I[I_UNLOCK_LEFT, j] += int(level)
            I[I_UNLOCK_DAY, j] = t
            F[F_UNLOCK_BOOST, j] = p[K_UNLOCK_EFF] * traits[T_RU, j] * _level_effect(3, level) * sat
            I[I_N_UNLOCK, j] += 1
        if s == SEG_DOG and R.uniform(key, uid, t, R.P_DOGCHURN) < p[K_DOG_BUMP]:
            _churn(j, t, F, I)
            return
    # 2. expiry
    if F[F_COINS, j] > 0.0 and t - I[I_COIN_DAY, j] >= p[K_COIN_EXP]:
        F[F_COINS, j] = 0.0
    if I[I_UNLOCK_LEFT, j] > 0 and t - I[I_UNLOCK_DAY, j] >= p[K_UNLOCK_EXP]:
        I[I_UNLOCK_LEFT, j] = 0
    member = I[I_MEMBER_UNTIL, j] > t
    in_trial = I[I_TRIAL_END, j] > t
    ad_free = member or in_trial
    coins_live = F[F_COINS, j] > 0.0
    unlock_live = I[I_UNLOCK_LEFT, j] > 0
    # 3. open?
    da = I[I_DAYS_ACTIVE, j]
    logit = traits[T_HABIT, j] + p[K_LEARNING] * min(da, p[K_LEARN_CAP]) - p[K_NOVELTY] * math.log1p(t)
    if I[I_LAST_ACTIVE, j] == t - 1:
        logit += p[K_MOMENTUM]
    if not ad_free:
        logit -= p[K_AD_ANNOY] * (1.0 - traits[T_ADTOL, j])
    if coins_live:
        if s == SEG_HUNTER:
            logit += F[F_COIN_BOOST, j]
        else:
            logit += F[F_COIN_BOOST, j] * math.exp(-(t - I[I_COIN_DAY, j]) / p[K_COIN_DECAY])
    if in_trial:
        logit += F[F_TRIAL_BOOST, j]
    if unlock_live:
        logit += F[F_UNLOCK_BOOST, j] * math.exp(-(t - I[I_UNLOCK_DAY, j]) / p[K_UNLOCK_DECAY])
    p_open = _sig(logit)
    if t == 1:
        F[F_P_D1, j] = p_open
    elif t == 7:
        F[F_P_D7, j] = p_open
    elif t == 14:
        F[F_P_D14, j] = p_open
    elif t == 30:
        F[F_P_D30, j] = p_open
    opened = R.uniform(key, uid, t, R.P_OPEN) < p_open
    # 4. activity
    if opened:
        I[I_DAYS_ACTIVE, j] = da + 1
        I[I_LAST_ACTIVE, j] = t
        mask[j] |= np.int64(1) << np.int64(t)
        minutes = math.exp(traits[T_MINMU, j] + p[K_MIN_SD] * R.normal(key, uid, t, R.P_MINUTES))
        minutes = min(p[K_MAX_MIN], minutes)
        F[F_MINUTES, j] += minutes
        mpc = p[K_MPC] * (1.3 - 0.6 * traits[T_BINGE, j])
        chapters = int(minutes / mpc)
        I[I_CHAPTERS, j] += chapters
        if unlock_live:
            premium = int(chapters * p[K_PREMIUM] + 0.5)
            used = min(I[I_UNLOCK_LEFT, j], premium)
            I[I_UNLOCK_LEFT, j] -= used
            c = used * p[K_ROYALTY]
            F[F_COST_UNLOCK, j] += c
            F[F_COST, j] += c
        adv = min(p[K_IMP_CAP], minutes * p[K_IPM]) * p[K_ECPM] / 1000.0
        if in_trial and not member:
            F[F_COST_TRIAL, j] += adv
            F[F_COST, j] += adv
            I[I_TRIAL_ACTIVE, j] += 1
        elif not member:
            F[F_ADREV, j] += adv
            F[F_REVENUE, j] += adv
        if coins_live:
            if s == SEG_HUNTER:
                red = F[F_COINS, j]
            else:
                red = min(F[F_COINS, j], F[F_COIN_POT, j] * minutes / p[K_REDEEM_MIN])
            F[F_COINS, j] -= red
            if F[F_COINS, j] <= 1e-12:
                red += F[F_COINS, j]
                F[F_COINS, j] = 0.0
                if s == SEG_HUNTER:
                    I[I_CASHED_OUT, j] = 1
            F[F_COST_COINS, j] += red
            F[F_COST, j] += red
        if not member:
            pay_p = _sig(p[K_PAY_BASE] + traits[T_PAYPROP, j] + p[K_PAY_ACT] * math.log(da + 1.0))
            if coins_live:
                pay_p *= 1.0 - p[K_COIN_CANN]
            if unlock_live:
                pay_p *= 1.0 - p[K_UNLOCK_CANN]
            if in_trial:
                pay_p *= 1.0 - p[K_TRIAL_CANN] * p[K_MEMB_SHARE]
            if R.uniform(key, uid, t, R.P_PAY) < pay_p:
                if (not in_trial) and R.uniform(key, uid, t, R.P_PAYTYPE) < p[K_MEMB_SHARE]:
                    amt = p[K_MEMB_PRICE]
                    I[I_MEMBER_UNTIL, j] = t + 1 + int(p[K_MEMB_DAYS])
                else:
                    amt = p[K_CH_PRICE]
                F[F_PAYREV, j] += amt
                F[F_REVENUE, j] += amt
                I[I_N_PAYMENTS, j] += 1
                if I[I_FIRST_PAY_DAY, j] < 0:
                    I[I_FIRST_PAY_DAY, j] = t
    # 5. trial conversion on the trial's last day
    if in_trial and I[I_TRIAL_END, j] == t + 1 and I[I_MEMBER_UNTIL, j] <= t:
        length = max(1, I[I_TRIAL_END, j] - I[I_TRIAL_START, j])
        share = I[I_TRIAL_ACTIVE, j] / length
        cp = _sig(p[K_CONV_BASE] + p[K_CONV_PAY] * traits[T_PAYPROP, j] + p[K_CONV_SHARE] * share)
        if R.uniform(key, uid, t, R.P_CONVERT) < cp:
            amt = p[K_MEMB_PRICE]
            I[I_MEMBER_UNTIL, j] = t + 1 + int(p[K_MEMB_DAYS])
            F[F_PAYREV, j] += amt
            F[F_REVENUE, j] += amt
            I[I_N_PAYMENTS, j] += 1
            if I[I_FIRST_PAY_DAY, j] < 0:
                I[I_FIRST_PAY_DAY, j] = t
    # 6. churn
    hz = p[K_CHURN_ACT] if opened else p[K_CHURN_INACT]
    if I[I_CASHED_OUT, j] == 1:
        hz = max(hz, p[K_HUNTER_CHURN])
    if R.uniform(key, uid, t, R.P_CHURN) < hz:
        _churn(j, t, F, I)


@njit(inline="always", cache=True)
def _churn(j, t, F, I):
    I[I_ALIVE, j] = 0
    I[I_CHURN_DAY, j] = t
    F[F_COINS, j] = 0.0
    I[I_UNLOCK_LEFT, j] = 0
    if I[I_TRIAL_END, j] > t + 1:
        I[I_TRIAL_END, j] = t + 1


@njit(parallel=True, cache=True)
def step_rows(rows, uids, t, key, p, cat_type, cat_level, traits, seg, F, I, mask):
    """Advance the users at positions ``rows`` through day ``t`` (parallel over users)."""
    for r in prange(rows.shape[0]):
        j = rows[r]
        _user_day(j, uids[j], t, key, p, cat_type, cat_level, traits, seg, F, I, mask)


@njit(cache=True)
def step_rows_serial(rows, uids, t, key, p, cat_type, cat_level, traits, seg, F, I, mask):
    """Serial twin of :func:`step_rows` for single-user agents (no thread launch)."""
    for r in range(rows.shape[0]):
        j = rows[r]
        _user_day(j, uids[j], t, key, p, cat_type, cat_level, traits, seg, F, I, mask)


@njit(parallel=True, cache=True)
def step_range(lo, hi, uids, t, key, p, cat_type, cat_level, traits, seg, F, I, mask):
    """Advance the contiguous rows ``lo..hi-1`` through day ``t``."""
    for j in prange(lo, hi):
        _user_day(j, uids[j], t, key, p, cat_type, cat_level, traits, seg, F, I, mask)


SETTLE_ROWS = (F_REVENUE, F_ADREV, F_PAYREV, F_COST, F_COST_COINS, F_COST_TRIAL, F_COST_UNLOCK)
(S_ACTIVE, S_ALIVE, S_NEW_PAYERS, S_RESERVED) = range(len(SETTLE_ROWS), len(SETTLE_ROWS) + 4)
N_SETTLE = len(SETTLE_ROWS) + 4


@njit(cache=True)
def settle_rows(rows, t, F, I, mask, daily_ad_cap, royalty, live, died):
    """One serial pass over the rows stepped today (the users installed this morning).

    ``live[k]`` gets the sum of ``F[SETTLE_ROWS[k]]`` over those rows, then the
    day's active count, the users still installed, the new payers and the
    outstanding commitments from ``t + 1``.  ``died[k]`` gets the same F sums
    over the rows that uninstalled today: their values are final, so the
    model moves them to its frozen totals.  Users uninstalled before today
    cannot change, so the pass never needs to visit them.
    """
    nf = len(SETTLE_ROWS)
    for k in range(live.shape[0]):
        live[k] = 0.0
    for k in range(died.shape[0]):
        died[k] = 0.0
    bit = np.int64(1) << np.int64(t)
    for r in range(rows.shape[0]):
        j = rows[r]
        for k in range(nf):
            live[k] += F[SETTLE_ROWS[k], j]
        if mask[j] & bit:
            live[nf] += 1.0
        if I[I_FIRST_PAY_DAY, j] == t:
            live[nf + 2] += 1.0
        if I[I_ALIVE, j] == 1:
            live[nf + 1] += 1.0
            v = F[F_COINS, j] + I[I_UNLOCK_LEFT, j] * royalty
            d = I[I_TRIAL_END, j] - (t + 1)
            if d > 0:
                v += d * daily_ad_cap
            live[nf + 3] += v
        else:
            for k in range(nf):
                died[k] += F[SETTLE_ROWS[k], j]


@njit(cache=True)
def liabilities(F, I, t_next, daily_ad_cap, royalty, out):
    """Outstanding commitment per user from day ``t_next`` on (what the ledger still reserves)."""
    for j in range(F.shape[1]):
        v = F[F_COINS, j] + I[I_UNLOCK_LEFT, j] * royalty
        d = I[I_TRIAL_END, j] - t_next
        if d > 0:
            v += d * daily_ad_cap
        out[j] = v
    return out


@njit(cache=True)
def authorise(proposed_rows, proposed_actions, commit, alive, available):
    """Sequential budget check in user order.  Returns (granted mask, amount reserved).

    A grant is refused when its commitment would take the arm over budget; a
    grant to an uninstalled user is dropped (not counted as refused).
    """
    n = proposed_rows.shape[0]
    ok = np.zeros(n, dtype=np.int8)
    reserved = 0.0
    for k in range(n):
        a = proposed_actions[k]
        if a <= 0 or alive[proposed_rows[k]] == 0:
            continue
        c = commit[a]
        # relative tolerance only: a zero budget admits no positive commitment, however small
        if c <= (available - reserved) + 1e-12 * available:
            ok[k] = 1
            reserved += c
        else:
            ok[k] = -1
    return ok, reserved
