"""``rdpo solve``: solve DPO, KLDPO or WDPO exactly and print the dual, the worst case and the
certificate gap."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .._validate import SOLVER_PATHS
from ..data import PreferenceData
from ..io import dumps_json
from ..options import POSITIVE_INT, check
from ..worlds import BUILTIN_WORLDS, World, builtin_world


def add_parser(sub) -> None:
    p = sub.add_parser(
        "solve",
        help="solve DPO exactly on a built-in world or a data file",
        description="Solve exact DPO on a world's sample or population, or on a "
        ".npz/.csv data file.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--world",
        choices=sorted(BUILTIN_WORLDS),
        default="toy",
        help="built-in world (default toy)",
    )
    src.add_argument("--data", type=Path, help="a .npz or .csv file written by PreferenceData")
    p.add_argument(
        "--n",
        type=int,
        default=None,
        help="--world only: sample size drawn from the world (default: exact population)",
    )
    p.add_argument("--seed", type=int, default=None, help="--world only: world and sample seed (0)")
    p.add_argument(
        "--beta", type=float, default=None, help="beta > 0 (default: the world's; with --data 1)"
    )
    p.add_argument("--radius", type=float, default=None, help="constraint ||theta|| <= radius")
    p.add_argument(
        "--method",
        choices=["dpo", "kldpo", "wdpo"],
        default="dpo",
        help="objective: DPO, KL-robust DPO or Wasserstein-robust DPO (default dpo)",
    )
    p.add_argument(
        "--rho", type=float, default=None, help="kldpo/wdpo: uncertainty radius >= 0 (default 0)"
    )
    p.add_argument("--p", type=float, default=None, help="wdpo: Wasserstein order p >= 1 (1)")
    p.add_argument(
        "--kappa",
        type=float,
        default=None,
        help="wdpo: cost of a label flip > 0 (default inf: no flips)",
    )
    p.add_argument(
        "--solver",
        choices=list(SOLVER_PATHS),
        default=None,
        help="solution path: conic programs (cvxpy) or the fast exact path (fast). Default: "
        "fast where the problem has it (dpo, kldpo, continuous wdpo without --kappa), else "
        "cvxpy",
    )
    p.add_argument(
        "--cvxpy-solver",
        default="CLARABEL",
        help="conic backend of the cvxpy path, one of cvxpy.installed_solvers() (default CLARABEL)",
    )
    p.add_argument(
        "--candidates",
        choices=["none", "world"],
        default=None,
        help="wdpo on a world: adversary over all of Z ('world', default) or continuous x",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def check_args(args) -> None:
    """Refuse bad values and options that do not apply, before any work; fill defaults."""
    from . import checks as C

    if args.data is not None:
        C.not_applicable(
            args, {"n": "--n", "seed": "--seed"}, "with --data (they draw from a world)"
        )
    if args.n is not None:
        C.integer(args.n, "--n", minimum=1)
    if args.seed is not None:
        C.integer(args.seed, "--seed", minimum=0)
    if args.beta is not None:
        C.number(args.beta, "--beta", minimum=0.0, strict=True)
    if args.radius is not None:
        C.number(args.radius, "--radius", minimum=0.0, strict=True, allow_inf=True)
    method = getattr(args, "method", "dpo")
    if method == "dpo":
        C.not_applicable(
            args,
            {"rho": "--rho", "p": "--p", "kappa": "--kappa"},
            "to --method dpo (they set the robust methods)",
        )
    if method != "wdpo":
        C.not_applicable(
            args,
            {"p": "--p", "kappa": "--kappa", "candidates": "--candidates"},
            f"to --method {method} (they set wdpo)",
        )
    if args.data is not None:
        C.not_applicable(args, {"candidates": "--candidates"}, "with --data (no world)")
    if args.rho is not None:
        C.number(args.rho, "--rho", minimum=0.0, allow_inf=True)
    if args.p is not None:
        C.number(args.p, "--p", minimum=1.0, allow_inf=True)
    if args.kappa is not None:
        C.number(args.kappa, "--kappa", minimum=0.0, strict=True, allow_inf=True)
    defaults = {
        "seed": 0,
        "rho": 0.0,
        "p": 1.0,
        "kappa": float("inf"),
        "candidates": "world",
    }
    for k, v in defaults.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)


def load_problem(args) -> tuple[PreferenceData, float, World | None]:
    """The data, beta and (if any) world that ``args`` describe. ``--beta`` defaults to the
    world's beta, or 1 with ``--data``; an explicit value is always used."""
    if args.data is not None:
        from ..io import read_preference_data

        data = read_preference_data(args.data, flag="--data")
        return data, (1.0 if args.beta is None else args.beta), None
    seed = 0 if args.seed is None else args.seed
    world = builtin_world(args.world, seed)
    if args.n is None:
        data = world.population.data
    else:
        check("n", args.n, POSITIVE_INT, owner="rdpo solve")
        data = world.empirical(args.n, seed)
    return data, (world.beta if args.beta is None else args.beta), world


def solve(args, data, beta, world=None):
    from ..exact import dpo, kldpo, wdpo

    method = getattr(args, "method", "dpo")
    cand = None
    if method == "wdpo" and world is not None and args.candidates == "world":
        cand = world.candidates()
    solver = getattr(args, "solver", None)
    if solver is None:
        solver = default_solver(method, cand, getattr(args, "kappa", float("inf")))
    paths = {"solver": solver, "cvxpy_solver": getattr(args, "cvxpy_solver", "CLARABEL")}
    if method == "dpo":
        return dpo(data, beta=beta, radius=args.radius, **paths)
    if method == "kldpo":
        # the fast path certifies with the exact tilted distribution (no conic program)
        cert = "root" if solver == "fast" else "auto"
        return kldpo(data, rho=args.rho, beta=beta, radius=args.radius, certificate=cert, **paths)
    return wdpo(
        data,
        rho=args.rho,
        beta=beta,
        p=args.p,
        kappa=args.kappa,
        radius=args.radius,
        candidates=cand,
        **paths,
    )


def default_solver(method: str, candidates, kappa: float) -> str:
    """The fast exact path wherever the problem has one (DPO, KLDPO, continuous WDPO without
    label flips), else the conic program: the fast path is certified the same way and starts
    without importing cvxpy (see ``benchmarks/startup.py``)."""
    if method == "wdpo" and (candidates is not None or math.isfinite(kappa)):
        return "cvxpy"
    return "fast"


def worst_case_summary(res) -> dict:
    """A few numbers describing the adversary: KL or transport cost, effective support."""
    out = {}
    q = res.worst_case
    if q is not None:
        q = np.asarray(q, dtype=float)
        out["worst_case_support"] = int(np.sum(q > 1e-12))
        out["worst_case_max_weight"] = float(q.max())
        out["worst_case_effective_size"] = float(1.0 / np.sum(q**2))
    for key in ("kl_worst_case", "transport_cost", "rho_threshold", "lipschitz", "primal_value"):
        v = res.info.get(key)
        if isinstance(v, (int, float)):
            out[key] = float(v)
    if res.margin_shift is not None:
        out["worst_case_max_margin_shift"] = float(np.max(res.margin_shift))
    if "flip_fraction" in res.info:
        out["flipped_mass_share"] = float(np.mean(np.asarray(res.info["flip_fraction"]) > 0))
    return out


def run(args) -> int:
    check_args(args)
    data, beta, world = load_problem(args)
    res = solve(args, data, beta, world)
    out = res.summary()
    out.update(worst_case_summary(res))
    out.update(n_support=data.n, d=data.d, beta=beta)
    if world is not None:
        out["world"] = world.name
        if world.theta_star is not None:
            out["theta_star"] = [float(t) for t in world.theta_star]
            out["error_to_theta_star"] = float(np.linalg.norm(res.theta - world.theta_star))
    if args.json:
        print(dumps_json(out, indent=2))
    else:
        for k, v in out.items():
            if isinstance(v, list):
                v = "[" + ", ".join(f"{t:.6g}" for t in v) + "]"
            elif isinstance(v, float):
                v = f"{v:.8g}"
            print(f"{k:>22s}: {v}")
    return 0
