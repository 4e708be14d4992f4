"""LODO-E1c: a frozen, pretrained LODO preconditioner on a new noisy bowl (Liao et al. 2023, §5.1).

Run from the repository root:

    python benchmarks/lodo_frozen.py                         # 8 seeds, LODO trained 100k steps (long)
    python benchmarks/lodo_frozen.py --train-steps 20000 \
        --json benchmarks/results/lodo_frozen_train20k_cpu.json   # the CI-size training of EXPERIMENTS
    python benchmarks/lodo_frozen.py --quick                 # smoke run; writes lodo_frozen_quick_*

For each seed s, as the authors' ``experiment/freeze_hessian_test.py``:

1. train LODO (tuned noisy-bowl values: α₀ 0.270, β 0.195, meta-lr 9.6e-4) on the bowl of seed s
   (n = 100, λ geometric in [1e-3, 1], σ = 1) for ``--train-steps`` steps;
2. freeze θ: a new ``LODO(meta_lr=0)`` (same α₀, β, depth, block size and seed) loads the trained
   optimizer's ``state_dict()`` (θ, the meta-optimizer's state, the permutations); its gradient EMA is
   then reset to zero and x starts at 0, as the code's ``LODOWithCopiedHessianMinimizationProcedure``
   (momentum kept, m₀ = 0, no meta-updates); ``--keep-momentum-buffer`` keeps the trained EMA instead;
3. run it on a NEW bowl (seed 1000 + s: another U and another walk) for ``--frozen-steps`` steps:
   the paper reports that "within 10 steps the loss diverged";
4. control: the same frozen G on the ORIGINAL bowl (seed s's H, a fresh walk) for ``--control-steps``.

G is checked to stay bit-for-bit the trained one during both frozen runs.  Blow-up step: the first step
whose loss exceeds 10⁶ × the run's first loss or is not finite.  "Faithful if" (EXPERIMENTS LODO-E1c):
the blow-up comes within 30 steps in ≥ 7/8 of the seeds (scaled: ≥ 7/8 of the seeds run), and the
control stays stable (finite, below 10⁶ × its first loss) in every seed.  Printed as PASS/FAIL.

Writes benchmarks/results/lodo_frozen_cpu.json (+ .csv), with the machine and the exact command.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

import torch

try:  # run as a script, benchmarks/ is on sys.path
    import lodo_bowl as e1
    import optimizers as common
except ImportError:  # pragma: no cover
    from benchmarks import lodo_bowl as e1
    from benchmarks import optimizers as common

from precondalg.experiments.noisy_bowl import NoisyBowl, hessian_error, inverse_hessian_estimate, run
from precondalg.optim import LODO

F64 = torch.float64
BLOWUP = 1e6
"""The loss must exceed this multiple of its first value (or become non-finite) to count as a blow-up."""
WITHIN = 30
"""... within this many steps (EXPERIMENTS: 10–30; the paper: 10)."""


def frozen_copy(trained: torch.optim.Optimizer, params: list[torch.Tensor], keep_momentum: bool, **hp: Any):
    """A LODO with meta_lr = 0 carrying the trained optimizer's state (θ, permutations, meta-state);
    its EMA is zeroed unless `keep_momentum`."""
    opt = LODO(params, meta_lr=0.0, **hp)
    opt.load_state_dict(trained.state_dict())
    if not keep_momentum:
        for p in params:
            opt.state[p]["exp_avg"].zero_()
    return opt


def blowup_step(losses: torch.Tensor) -> int | None:
    """The first step whose loss is non-finite or exceeds BLOWUP × the first loss; None if none."""
    first = float(losses[0])
    bad = ~torch.isfinite(losses) | (losses > BLOWUP * first)
    idx = torch.nonzero(bad)
    return int(idx[0]) if len(idx) else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--train-steps", type=int, default=100_000)
    ap.add_argument("--frozen-steps", type=int, default=100)
    ap.add_argument("--control-steps", type=int, default=2000)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--lam-min", type=float, default=1e-3)
    ap.add_argument("--meta-lr", type=float, default=e1.META_LR_PRIMARY)
    ap.add_argument(
        "--keep-momentum-buffer", action="store_true", help="keep the trained EMA (default: m₀ = 0)"
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 seeds, 3000 training steps")
    ap.add_argument("--resume", action="store_true", help="keep the seeds already in the JSON; run the rest")
    e1.add_common_arguments(ap)
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.train_steps, args.control_steps = 2, 3000, 500
    bench = common.start_run(args, "lodo_frozen_quick" if args.quick else "lodo_frozen", git=not args.no_git)
    if bench is None:
        return 2
    torch.set_default_dtype(F64)
    command = "python " + " ".join([sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    bench.log(f"command: {command}")
    hp = {"lr": e1.TUNED["LODO"]["lr"], "beta": e1.TUNED["LODO"]["beta"]}
    records: list[dict[str, Any]] = []
    if args.resume and bench.json_path.exists():
        old = json.loads(bench.json_path.read_text())
        if old.get("train_steps", old.get("config", {}).get("train_steps")) != args.train_steps:
            raise SystemExit(f"--resume: {bench.json_path} was made with another --train-steps")
        records = [r for r in old["runs"] if r["seed"] < args.seeds]
        bench.log(f"resumed seeds {[r['seed'] for r in records]} from {bench.json_path}")
    for seed in range(args.seeds):
        if any(r["seed"] == seed for r in records):
            continue
        trained_run = run(
            lambda p, seed=seed: LODO(p, meta_lr=args.meta_lr, seed=seed, **hp),
            args.train_steps,
            bowl=NoisyBowl(args.n, 1.0, args.lam_min, seed),
            progress=lambda t, loss, seed=seed: bench.log(
                f"  training seed {seed}: step {t}, loss {loss:.3f}"
            ),
            progress_every=max(1, args.train_steps // 4),
        )
        trained = trained_run.optimizer
        G = inverse_hessian_estimate(trained)
        h_train = trained_run.bowl.H

        def frozen(p, seed=seed, trained=trained):
            return frozen_copy(trained, p, args.keep_momentum_buffer, seed=seed, **hp)

        new_bowl = NoisyBowl(args.n, 1.0, args.lam_min, 1000 + seed)
        new = run(frozen, args.frozen_steps, bowl=new_bowl)
        control_bowl = NoisyBowl(args.n, 1.0, args.lam_min, seed, walk_seed=2000 + seed)
        control = run(frozen, args.control_steps, bowl=control_bowl)
        unchanged = all(torch.equal(inverse_hessian_estimate(r.optimizer), G) for r in (new, control))
        eig_new = torch.linalg.eigvals(G @ new_bowl.H).abs().max()
        eig_old = torch.linalg.eigvals(G @ h_train).abs().max()
        b = blowup_step(new.losses)
        cb = blowup_step(control.losses)
        rec = {
            "seed": seed,
            "trained_late_mean": trained_run.late_mean(0.1),
            "trained_hessian_error": hessian_error(G, h_train),
            "G_unchanged_while_frozen": unchanged,
            "new_bowl_first_loss": float(new.losses[0]),
            "new_bowl_blowup_step": b,
            "new_bowl_nonfinite_step": new.stopped_at,
            "new_bowl_losses_first_12": new.losses[:12].tolist(),
            "spectral_radius_GH_new": float(eig_new),
            "spectral_radius_GH_original": float(eig_old),
            "control_blowup_step": cb,
            "control_max_loss": float(control.losses.max()),
            "control_late_mean": control.late_mean(0.1) if control.stopped_at is None else math.inf,
            "train_seconds": trained_run.seconds,
        }
        records.append(rec)
        bench.log(
            f"seed {seed}: trained late mean {rec['trained_late_mean']:.3f}; frozen on a new bowl: "
            f"blow-up at step {b} (ρ(GH_new) = {float(eig_new):.3g}); control on the original bowl: "
            f"{'blow-up at ' + str(cb) if cb is not None else 'stable'}, "
            f"late mean {rec['control_late_mean']:.3f}"
        )
        partial = {
            "complete": False,
            "command": command,
            "machine": bench.info,
            "train_steps": args.train_steps,
            "runs": records,
        }
        bench.json_path.write_text(json.dumps(partial, indent=1, default=str))  # overwritten at the end

    k = len(records)
    fast = [
        r for r in records if r["new_bowl_blowup_step"] is not None and r["new_bowl_blowup_step"] <= WITHIN
    ]
    within10 = [
        r for r in records if r["new_bowl_blowup_step"] is not None and r["new_bowl_blowup_step"] <= 10
    ]
    stable = [
        r for r in records if r["control_blowup_step"] is None and math.isfinite(r["control_late_mean"])
    ]
    need = math.ceil(7 * k / 8)
    crit = [
        e1.criterion(
            f"E1c: frozen G on a new bowl: loss > 1e6 × initial (or non-finite) within {WITHIN} steps "
            f"in >= 7/8 of the seeds ({need}/{k})",
            len(fast) >= need,
            f"{len(fast)}/{k} seeds (within 10 steps: {len(within10)}/{k}); blow-up steps "
            + ", ".join(str(r["new_bowl_blowup_step"]) for r in records),
        ),
        e1.criterion(
            "E1c control: the same frozen G on the original bowl stays stable (every seed)",
            len(stable) == k,
            f"{len(stable)}/{k} stable; late means "
            + ", ".join(f"{r['control_late_mean']:.3f}" for r in records)
            + " (trained: "
            + ", ".join(f"{r['trained_late_mean']:.3f}" for r in records)
            + ")",
        ),
        e1.criterion(
            "setup: G unchanged (bit for bit) during the frozen runs",
            all(r["G_unchanged_while_frozen"] for r in records),
            "",
        ),
    ]
    print(f"\nMachine: {common.describe_machine(bench.info)}")
    print(f"Command: {command}")
    print(
        f"\nLODO trained {args.train_steps} steps, then frozen (meta_lr = 0, "
        f"{'trained EMA kept' if args.keep_momentum_buffer else 'm₀ = 0'}, x₀ = 0)"
    )
    print(
        "| seed | trained late loss | new bowl: blow-up step | ρ(G H_new) | ρ(G H_orig) | control late loss |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for r in records:
        print(
            f"| {r['seed']} | {r['trained_late_mean']:.3f} | {r['new_bowl_blowup_step']} | "
            f"{r['spectral_radius_GH_new']:.3g} | {r['spectral_radius_GH_original']:.3g} | "
            f"{r['control_late_mean']:.3f} |"
        )
    e1.print_criteria(crit, "LODO-E1c")
    out = {
        "experiment": "LODO-E1c frozen pretrained preconditioner on a new bowl (Liao et al. 2023, §5.1)",
        "complete": True,
        "command": command,
        "machine": bench.info,
        "config": {
            "n": args.n,
            "lam_min": args.lam_min,
            "train_steps": args.train_steps,
            "frozen_steps": args.frozen_steps,
            "control_steps": args.control_steps,
            "seeds": list(range(args.seeds)),
            "lodo": hp | {"meta_lr": args.meta_lr},
            "momentum_buffer": "kept" if args.keep_momentum_buffer else "reset to 0 (as the code)",
            "blowup": f"loss > {BLOWUP:g} × first loss or non-finite",
            "within": WITHIN,
        },
        "criteria": crit,
        "runs": records,
        "elapsed_s": bench.elapsed(),
    }
    bench.json_path.write_text(json.dumps(out, indent=1, default=str))
    common.write_csv(
        bench.csv_path, [{k: v for k, v in r.items() if k != "new_bowl_losses_first_12"} for r in records]
    )
    bench.log(f"wrote {bench.json_path}, {bench.csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
