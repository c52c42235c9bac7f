"""The scenario card: how a scenario's world behaves, measured on a simulated cohort.

    python -m sim.card --scenario fanqie_newuser --users 200000 --seed 0 --out results/cards

Prints (a rich table) and writes ``<out>/<scenario>.json`` and
``<out>/<scenario>.md`` (atomically):

* **calibration**: target band vs simulated control metric (D1/D7/D14/D30
  retention, first-payment conversion by D7/D30, revenue per user), with the
  binomial standard error and pass/fail against the scenario's ``[targets]``;
* **segments**: configured vs realised hidden segment shares;
* **actions**: each catalogue action given to everyone on day 1 (no budget),
  read off the realised counterfactual twins of the same cohort (exact
  per-user effects, common random numbers): true D7 lift, first-pay lifts,
  realised cost per user, commitment per user, cost per incremental
  D7-retained user and the share of users it hurts (retained on D7 under
  "none", not under the action);
* **oracle**: the oracle allocation at the default budget per user
  (``meta.default_budget_per_user``; it reads the hidden truth), simulated in
  the same world: D7, pay conversion, cost per user, cost per incremental
  D7-retained user and the mix of actions granted.

This module reads hidden traits and twins: it is evaluation code.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from policies.oracle import OraclePolicy
from sim.atomic import write_text_atomic
from sim.catalogue import Catalogue
from sim.model import simulate
from sim.population import generate_cohort
from sim.scenario import SEGMENTS, Scenario, ScenarioError, available_scenarios, load_scenario
from sim.twins import static_action_outcomes

# The growth team's business targets (the A/B runner checks each arm against the same defaults):
# D7 retention, first-payment conversion by D30, and the cost per incremental D7-retained user as
# a fraction of the best blanket incentive's.
BUSINESS_TARGETS = {"d7_retention": 0.08, "pay_conv_d30": 0.03, "cost_per_incremental_d7_vs_best_blanket": 0.95}
# The objective of the card's second oracle: D7 retention and first payment by D30, equally weighted.
BUSINESS_MIX = {"retained_d7": 1.0, "paid_d30": 1.0}

# metric key in outcomes, label, target field in [targets] (or None)
CALIBRATION_METRICS = (
    ("retained_d1", "D1 retention", "d1_retention"),
    ("retained_d7", "D7 retention", "d7_retention"),
    ("retained_d14", "D14 retention", None),
    ("retained_d30", "D30 retention", "d30_retention"),
    ("paid_d7", "first pay by D7", None),
    ("paid_d30", "first pay by D30", "pay_conv_d30"),
    ("revenue", "revenue per user (yuan)", None),
)


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def cost_per_incremental(total_cost: float, incremental_users: float) -> float:
    """Yuan per incremental retained user; ``inf`` when the action retains nobody extra."""
    if incremental_users <= 0:
        return math.inf
    return total_cost / incremental_users


def scenario_card(
    scenario: Scenario | str,
    n_users: int = 200_000,
    seed: int = 0,
    *,
    budget_per_user: float | None = None,
    oracle_replications: int = 4,
) -> dict[str, Any]:
    """Compute the card of a scenario on users ``0..n_users-1`` of run seed ``seed``."""
    sc = load_scenario(scenario)
    if not isinstance(n_users, (int, np.integer)) or n_users < 2:
        raise ValueError(f"users: expected an integer >= 2, got {n_users!r}")
    budget_pu = sc.meta.default_budget_per_user if budget_per_user is None else float(budget_per_user)
    if not math.isfinite(budget_pu) or budget_pu < 0:
        raise ValueError(f"budget_per_user: expected a finite number >= 0, got {budget_per_user!r}")
    if not isinstance(oracle_replications, int) or oracle_replications < 1:
        raise ValueError(f"oracle_replications: expected an integer >= 1, got {oracle_replications!r}")
    coh = generate_cohort(sc, int(n_users), seed=seed)
    n = len(coh)
    # Realised twins of every day-1 action (column 0 = "none" = the control simulation).
    truth = static_action_outcomes(sc, coh, seed=seed, replications=0)
    cat = truth.catalogue
    y = truth.outcomes

    calibration = []
    tg = sc.targets
    for key, label, tfield in CALIBRATION_METRICS:
        col = y[key][:, 0]
        mean = float(col.mean())
        se = float(col.std(ddof=1) / math.sqrt(n))
        band = list(getattr(tg, tfield)) if tfield else None
        ok = None if band is None else bool(band[0] <= mean <= band[1])
        calibration.append({"metric": key, "label": label, "target": band, "simulated": mean, "se": se, "pass": ok})

    realised = np.bincount(coh.segment.astype(np.int64), minlength=len(SEGMENTS)) / n
    segments = [
        {"segment": s, "configured": float(getattr(sc.segments, s)), "realised": float(realised[k])}
        for k, s in enumerate(SEGMENTS)
    ]

    d7 = y["retained_d7"]
    actions = []
    for a in cat:
        if a.index == 0:
            continue
        eff = d7[:, a.index] - d7[:, 0]
        inc_users = float(eff.sum())
        total_cost = float(y["cost"][:, a.index].sum())
        actions.append({
            "action": a.name,
            "type": a.type_name,
            "level": a.level,
            "d7_lift": float(eff.mean()),
            "d7_lift_se": float(eff.std(ddof=1) / math.sqrt(n)),
            "first_pay_d7_lift": float((y["paid_d7"][:, a.index] - y["paid_d7"][:, 0]).mean()),
            "first_pay_d30_lift": float((y["paid_d30"][:, a.index] - y["paid_d30"][:, 0]).mean()),
            "revenue_lift": float((y["revenue"][:, a.index] - y["revenue"][:, 0]).mean()),
            "cost_per_user": total_cost / n,
            "commitment_per_user": float(a.commit_cost),
            "cost_per_incremental_d7": _finite_or_none(cost_per_incremental(total_cost, inc_users)),
            "share_hurt_d7": float((eff < 0).mean()),
            "share_helped_d7": float((eff > 0).mean()),
        })

    # Oracle allocations at the default budget (read the hidden truth: upper bounds). One oracle,
    # fitted once (its expected effects are cached), allocating first on D7 retention, then on the
    # business mix of D7 retention and first payment.
    oracle = OraclePolicy(replications=oracle_replications).fit(scenario=sc, seed=seed)
    oracle_row = _oracle_row(sc, cat, oracle, coh, d7[:, 0], budget_pu, seed)
    oracle.objective, oracle.weights = "mix", dict(BUSINESS_MIX)
    business_row = _oracle_row(sc, cat, oracle, coh, d7[:, 0], budget_pu, seed)
    blanket_cpi = [a["cost_per_incremental_d7"] for a in actions if a["cost_per_incremental_d7"] is not None]
    best_blanket_cpi = min(blanket_cpi) if blanket_cpi else None
    business = business_check(business_row, best_blanket_cpi)
    return {
        "scenario": sc.name,
        "description": sc.meta.description,
        "users": n,
        "days": sc.cohort.days,
        "seed": int(seed),
        "calibration": calibration,
        "calibration_pass": all(r["pass"] for r in calibration if r["pass"] is not None),
        "segments": segments,
        "actions": actions,
        "oracle": oracle_row,
        "oracle_business": business_row,
        "business_targets": business,
    }


def _oracle_row(sc: Scenario, cat: Catalogue, oracle: OraclePolicy, coh, control_d7: np.ndarray,
                budget_pu: float, seed: int) -> dict[str, Any]:
    """Simulate the oracle on the cohort at ``budget_pu`` per user and summarise its allocation."""
    n = len(coh)
    m = simulate(sc, oracle, cohort=coh, budget=budget_pu * n, seed=seed)
    o = m.outcomes()
    inc = float(o["retained_d7"].sum() - control_d7.sum())
    mix = {name: cnt / n for name, cnt in sorted(m.ledger.grants_by_action.items(), key=lambda kv: -kv[1])}
    return {
        "objective": oracle.objective,
        "weights": oracle.weights,
        "budget_per_user": budget_pu,
        "replications": oracle.replications,
        "retained_d7": float(o["retained_d7"].mean()),
        "d7_lift": float(o["retained_d7"].mean() - control_d7.mean()),
        "paid_d7": float(o["paid_d7"].mean()),
        "paid_d30": float(o["paid_d30"].mean()),
        "cost_per_user": float(o["cost"].mean()),
        "committed_per_user": sum(cnt * cat[cat.index(name)].commit_cost
                                  for name, cnt in m.ledger.grants_by_action.items()) / n,
        "cost_per_incremental_d7": _finite_or_none(cost_per_incremental(float(o["cost"].sum()), inc)),
        "treated_share": float(sum(mix.values())),
        "refused": int(m.ledger.refused),
        "actions_mix": mix,
    }


def business_check(row: dict[str, Any], best_blanket_cpi: float | None) -> dict[str, Any]:
    """The business targets (BUSINESS_TARGETS) checked on one allocation's summary row."""
    t = BUSINESS_TARGETS
    cpi = row["cost_per_incremental_d7"]
    cap = None if best_blanket_cpi is None else t["cost_per_incremental_d7_vs_best_blanket"] * best_blanket_cpi
    checks = {
        "d7_retention": row["retained_d7"] >= t["d7_retention"],
        "pay_conv_d30": row["paid_d30"] >= t["pay_conv_d30"],
        "cost_per_incremental_d7": cpi is not None and (cap is None or cpi <= cap),
    }
    return {"targets": dict(t), "best_blanket_cost_per_incremental_d7": best_blanket_cpi,
            "cost_per_incremental_d7_cap": cap, "checks": checks, "all_met": all(checks.values())}


# ---------------------------------------------------------------------------
def _pct(x: float | None, nd: int = 2) -> str:
    return "n/a" if x is None else f"{100 * x:.{nd}f}%"


def _pp(x: float, nd: int = 2) -> str:
    return f"{100 * x:+.{nd}f} pp"


def _yuan(x: float | None, nd: int = 3) -> str:
    return "inf (no lift)" if x is None else f"{x:.{nd}f}"


def _fmt_metric(key: str, v: float) -> str:
    return f"{v:.4f}" if key == "revenue" else _pct(v)


def card_tables(card: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The card as (title, header, rows) tables, shared by the Markdown and rich renderers."""
    cal_rows = []
    for r in card["calibration"]:
        band = "-" if r["target"] is None else f"{_fmt_metric(r['metric'], r['target'][0])} .. " \
                                               f"{_fmt_metric(r['metric'], r['target'][1])}"
        verdict = "-" if r["pass"] is None else ("pass" if r["pass"] else "FAIL")
        se = f"{r['se']:.4f}" if r["metric"] == "revenue" else _pct(r["se"], 3)
        cal_rows.append([r["label"], band, _fmt_metric(r["metric"], r["simulated"]), se, verdict])
    seg_rows = [[s["segment"], _pct(s["configured"], 1), _pct(s["realised"], 1)] for s in card["segments"]]
    act_rows = [
        [a["action"], _pp(a["d7_lift"]), _pp(a["d7_lift_se"], 2).lstrip("+"), _pp(a["first_pay_d7_lift"], 3),
         _pp(a["first_pay_d30_lift"], 3), f"{a['cost_per_user']:.3f}", f"{a['commitment_per_user']:.3f}",
         _yuan(a["cost_per_incremental_d7"], 2), _pct(a["share_hurt_d7"])]
        for a in card["actions"]
    ]
    o, ob = card["oracle"], card["oracle_business"]

    def _mix(r):
        return ", ".join(f"{k} {_pct(v, 1)}" for k, v in r["actions_mix"].items()) or "none"

    def _obj(r):
        w = r.get("weights") or {}
        return r["objective"] if not w else " + ".join(f"{v:g} x {k}" for k, v in w.items())

    ora_rows = [
        ["objective", _obj(o), _obj(ob)],
        ["budget per user (yuan)", f"{o['budget_per_user']:.3f}", f"{ob['budget_per_user']:.3f}"],
        ["D7 retention", *(f"{_pct(r['retained_d7'])} ({_pp(r['d7_lift'])})" for r in (o, ob))],
        ["first pay by D7 / D30", *(f"{_pct(r['paid_d7'])} / {_pct(r['paid_d30'])}" for r in (o, ob))],
        ["realised cost per user (yuan)", f"{o['cost_per_user']:.4f}", f"{ob['cost_per_user']:.4f}"],
        ["commitments granted per user (yuan)", f"{o['committed_per_user']:.4f}", f"{ob['committed_per_user']:.4f}"],
        ["cost per incremental D7 user (yuan)", _yuan(o["cost_per_incremental_d7"], 2),
         _yuan(ob["cost_per_incremental_d7"], 2)],
        ["users treated", _pct(o["treated_share"], 1), _pct(ob["treated_share"], 1)],
        ["actions mix (share of users)", _mix(o), _mix(ob)],
    ]
    bt = card["business_targets"]
    t, ck = bt["targets"], bt["checks"]
    cap = bt["cost_per_incremental_d7_cap"]
    verdict = {True: "met", False: "not met"}
    biz_rows = [
        ["D7 retention", f">= {_pct(t['d7_retention'], 0)}", _pct(ob["retained_d7"]), verdict[ck["d7_retention"]]],
        ["first pay by D30", f">= {_pct(t['pay_conv_d30'], 0)}", _pct(ob["paid_d30"]), verdict[ck["pay_conv_d30"]]],
        ["cost per incremental D7 user (yuan)",
         "any" if cap is None else f"<= {cap:.2f} ({t['cost_per_incremental_d7_vs_best_blanket']:g} x best blanket "
                                   f"{bt['best_blanket_cost_per_incremental_d7']:.2f})",
         _yuan(ob["cost_per_incremental_d7"], 2), verdict[ck["cost_per_incremental_d7"]]],
    ]
    return [
        ("Calibration: control cohort vs targets", ["metric", "target", "simulated", "s.e.", "verdict"], cal_rows),
        ("Hidden segments", ["segment", "configured", "realised"], seg_rows),
        (
            "Each action given to everyone on day 1 (realised twins, no budget)",
            ["action", "D7 lift", "s.e.", "first pay D7", "first pay D30", "cost/user", "commit/user",
             "cost / incr. D7 user", "hurt (D7)"],
            act_rows,
        ),
        ("Oracle allocations at the default budget (read the hidden truth)", ["", "D7 oracle", "business oracle"],
         ora_rows),
        ("Business targets: the business oracle (is the growth team's goal reachable at this budget?)",
         ["target", "goal", "business oracle", "verdict"], biz_rows),
    ]


def card_markdown(card: dict[str, Any]) -> str:
    lines = [
        f"# Scenario card: {card['scenario']}",
        "",
        card["description"],
        "",
        f"{card['users']:,} users x {card['days']} days, seed {card['seed']}; generated by "
        f"`python -m sim.card --scenario {card['scenario']} --users {card['users']} --seed {card['seed']}`.",
        f"Calibration {'passes' if card['calibration_pass'] else 'FAILS'} its target bands.",
        "",
    ]
    for title, header, rows in card_tables(card):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines.append("")
    lines += [
        "Lifts are exact means of per-user differences between counterfactual twins (same users, same random "
        "draws); `hurt (D7)` is the share of users retained on D7 without the action but not with it. "
        "Cost per incremental D7 user = realised subsidy cost / (D7-retained users with the action - without).",
        "",
    ]
    return "\n".join(lines)


def write_card(card: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    jp, mp = out_dir / f"{card['scenario']}.json", out_dir / f"{card['scenario']}.md"
    write_text_atomic(jp, json.dumps(card, indent=2) + "\n")
    write_text_atomic(mp, card_markdown(card))
    return jp, mp


def print_card(card: dict[str, Any], seconds: float | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    took = "" if seconds is None else f", {seconds:.1f} s"
    console.print(f"[bold]Scenario card: {card['scenario']}[/bold]  "
                  f"({card['users']:,} users, seed {card['seed']}{took})")
    for title, header, rows in card_tables(card):
        t = Table(title=title, title_justify="left")
        for h in header:
            t.add_column(h)
        for r in rows:
            t.add_row(*[(f"[red]{c}[/red]" if c == "FAIL" else c) for c in r])
        console.print(t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sim.card", description="Print and write a scenario's card.")
    p.add_argument("--scenario", default="fanqie_newuser",
                   help=f"shipped scenario name {available_scenarios()} or a path to a .toml file")
    p.add_argument("--users", type=int, default=200_000, help="cohort size (default 200000)")
    p.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    p.add_argument("--budget-per-user", type=float, default=None,
                   help="oracle budget in yuan per user (default: the scenario's meta.default_budget_per_user)")
    p.add_argument("--oracle-replications", type=int, default=4,
                   help="fresh-luck replications behind the oracle's expected effects (default 4)")
    p.add_argument("--out", type=Path, default=Path("results/cards"), help="output folder (default results/cards)")
    args = p.parse_args(argv)
    if args.users < 2:
        p.error(f"--users: expected an integer >= 2, got {args.users}")
    if args.seed < 0:
        p.error(f"--seed: expected a non-negative integer, got {args.seed}")
    if args.oracle_replications < 1:
        p.error(f"--oracle-replications: expected an integer >= 1, got {args.oracle_replications}")
    t0 = time.perf_counter()
    try:
        card = scenario_card(args.scenario, args.users, args.seed, budget_per_user=args.budget_per_user,
                             oracle_replications=args.oracle_replications)
    except (ScenarioError, ValueError) as err:
        p.error(str(err))
    print_card(card, time.perf_counter() - t0)
    jp, mp = write_card(card, args.out)
    print(f"wrote {jp} and {mp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
