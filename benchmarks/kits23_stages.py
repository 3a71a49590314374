"""Every stage of the paper's configuration on KiTS23-sized data, measured per stage.

Prepares a KiTS23 source folder (real label maps of ../shared/data/kits23_labels, synthetic CT
images of the same geometry) under ``--workdir``, then runs the workflow there:

- part ``data``: ``config/paper.yaml`` + ``config/kits23_stages.yaml``, target ``data``: convert,
  noise report, splits, plan + preprocessing with the paper's residual-encoder L planner
  (``results/kits23_stages``). With ``--resenc`` it also times one forward pass (inference) of
  that ResEnc-L network at its full patch and one training step at a ninth of the patch.
- part ``all``: the same + ``config/kits23_stages_cpu.yaml`` (``results/kits23_stages_cpu``):
  every stage with a CPU-sized network at the same spacing: convert, noise, splits, plan,
  tuning, training, prediction (full-resolution sliding window), evaluation and the report.

Each part's table comes from Snakemake's per-job benchmark files (benchmarks/pipeline.py).

    nice -n 19 python benchmarks/kits23_stages.py --resenc > benchmarks/results/kits23_stages.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

import pandas as pd  # noqa: E402
from pipeline import collect  # noqa: E402  (benchmarks/pipeline.py)

from nnrobustloss.config import load_config  # noqa: E402
from nnrobustloss.datasets.synthetic_ct import write_synthetic_kits23  # noqa: E402

SHARED_KITS = REPO.parent / "shared" / "data" / "kits23_labels"
CASES = ("case_00021", "case_00402", "case_00289")  # 38, 49 and 86 slices of 5 mm, 512 x 512
CONFIGS = [REPO / "config" / "paper.yaml", REPO / "config" / "kits23_stages.yaml"]
CPU_OVERLAY = REPO / "config" / "kits23_stages_cpu.yaml"
ORDER = ["convert", "noise", "splits", "plan", "tune_worker", "select_best", "train", "predict",
         "evaluate", "report"]


def snakemake(workdir: Path, configs: list[Path], *targets: str) -> float:
    """Run the workflow with ``--cores 2``; return its wall seconds (raises on failure).

    ``--rerun-incomplete``: the jobs a killed earlier run left incomplete are redone."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
           "--cores", "2", "--rerun-incomplete", "--configfile", *map(str, configs), "--", *targets]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if proc.returncode:
        sys.stderr.write(proc.stdout[-8000:])
        raise SystemExit(f"snakemake {' '.join(targets)} failed (rc {proc.returncode})")
    return time.perf_counter() - t0


def stage_table(results: Path, stages: list[str]) -> str:
    """Markdown table of the jobs of ``stages``: jobs, seconds (sum, slowest), peak RSS."""
    jobs = collect(results)
    jobs = jobs[jobs["stage"].isin(stages)]
    lines = ["| stage | jobs | seconds (sum) | slowest job (s) | peak RSS (MB) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for stage in [s for s in ORDER if s in set(jobs["stage"])]:
        j = jobs[jobs["stage"] == stage]
        lines.append(f"| {stage} | {len(j)} | {j['s'].sum():.0f} | {j['s'].max():.0f} | "
                     f"{j['max_rss_mb'].max():.0f} |")
    return "\n".join(lines)


def plan_summary(results: Path, task_cfg: dict) -> str:
    """Network, patch, batch and spacing of the task's 3d_fullres plans."""
    name = f"Dataset{task_cfg['dataset_id']:03d}_KiTS23"
    plans = json.loads((results / "preprocessed" / name / "nnUNetPlans.json").read_text())
    conf = plans["configurations"]["3d_fullres"]
    arch = conf["architecture"]
    return (f"{arch['network_class_name'].rsplit('.', 1)[-1]}, features "
            f"{arch['arch_kwargs']['features_per_stage']}, patch {conf['patch_size']}, batch "
            f"{conf['batch_size']}, spacing {[round(s, 3) for s in conf['spacing']]} mm, median "
            f"image {[int(s) for s in conf['median_image_size_in_voxels']]} voxels")


def resenc_step(plans_file: Path, train: bool, patch: list[int]) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of one pass of the plans' network in a fresh process: a
    forward pass without gradients, or (``train``) forward + backward, batch 1, 2 threads."""
    code = f"""
import json, resource, time, torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
a = json.load(open({str(plans_file)!r}))["configurations"]["3d_fullres"]["architecture"]
net = get_network_from_plans(a["network_class_name"], a["arch_kwargs"], a["_kw_requires_import"],
                             1, 4, deep_supervision={train})
torch.set_num_threads(2)
x = torch.randn(1, 1, *{patch})
t = time.perf_counter()
if {train}:
    sum(o.mean() for o in net(x)).backward()
else:
    net.eval()
    with torch.no_grad():
        net(x)
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], text=True, check=True,
                         stdout=subprocess.PIPE).stdout.split()
    return float(out[0]), float(out[1])


def header(prep_s: float) -> str:
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"Machine: {os.cpu_count()} cores, {ram:.0f} GiB, no GPU; shared with other jobs "
            f"(load average {os.getloadavg()[0]:.1f} at the start), so seconds are upper bounds. "
            f"Cases: {', '.join(CASES)} (real KiTS23 label maps, synthetic CT written in "
            f"{prep_s:.0f} s), n_folds 3, fold 0.\n")


def part_data(workdir: Path, results: Path, cfg: dict, resenc: bool) -> None:
    """Part 1: the data stages with the paper's plans (and optionally the ResEnc-L timings)."""
    wall = snakemake(workdir, CONFIGS, "data")
    noise = pd.read_csv(results / "noise" / "KiTS23.csv")
    dice = noise[noise["metric"] == "dice"].groupby("case")["value"].mean()
    print("## Data stages with the paper's plans (CI runs these: tests/test_kits23_stages.py)\n")
    print(f"`snakemake --configfile config/paper.yaml config/kits23_stages.yaml -- data`, wall "
          f"{wall:.0f} s.\n\nPlans (residual-encoder L planner): "
          f"{plan_summary(results, cfg['tasks']['KiTS23'])}.\n")
    print("Noise report, mean Dice of noisy vs reference labels over the 3 regions per case: "
          + ", ".join(f"{c} {v:.3f}" for c, v in dice.items()) + f"; mean {dice.mean():.3f} "
          "(the calibration's target, 0.96, is the mean over cases of the per-class Dice).\n")
    print(stage_table(results, ORDER[:4]) + "\n")
    if resenc:
        plans_file = results / "preprocessed" / "Dataset621_KiTS23" / "nnUNetPlans.json"
        patch = json.loads(plans_file.read_text())["configurations"]["3d_fullres"]["patch_size"]
        print("The ResEnc-L network of these plans, one pass in a fresh process on this CPU "
              "(batch 1, 2 threads; the plans' batch is 2):\n")
        print("| pass | patch | seconds | peak RSS (MB) |\n| --- | --- | ---: | ---: |")
        for train, p in ((False, patch), (True, [patch[0], patch[1] // 3, patch[2] // 3])):
            s, mb = resenc_step(plans_file, train, p)
            print(f"| {'forward + backward' if train else 'forward (inference)'} | {p} | "
                  f"{s:.0f} | {mb:.0f} |", flush=True)
        print()


def part_all(workdir: Path) -> None:
    """Part 2: every stage with the CPU-sized network (config/kits23_stages_cpu.yaml)."""
    configs = [*CONFIGS, CPU_OVERLAY]
    cfg = load_config(*configs)
    results = workdir / cfg["results_dir"]
    wall = snakemake(workdir, configs, "all")
    print("## Every stage, CPU-sized network (benchmark only)\n")
    print(f"`snakemake --configfile config/paper.yaml config/kits23_stages.yaml "
          f"config/kits23_stages_cpu.yaml` (target all), wall {wall:.0f} s of this invocation.\n"
          f"\nPlans: {plan_summary(results, cfg['tasks']['KiTS23'])}. Prediction: "
          f"mirroring {cfg['prediction']['mirroring']}, tile step "
          f"{cfg['prediction']['tile_step_size']}, held-out case of fold 0.\n")
    print(stage_table(results, ORDER))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=REPO,
                        help="Snakemake's working directory (outputs under its results/)")
    parser.add_argument("--part", choices=["data", "all", "both"], default="both",
                        help="data: part 1 only; all: part 2 only; both (default)")
    parser.add_argument("--resenc", action="store_true",
                        help="also time the ResEnc-L network at the paper's patch (part 1)")
    args = parser.parse_args()
    if not SHARED_KITS.is_dir():
        raise SystemExit(f"{SHARED_KITS} not found: the shared KiTS23 label maps are needed")
    workdir = args.workdir.resolve()
    os.chdir(workdir)  # the overlay's relative paths resolve against Snakemake's workdir
    cfg = load_config(*CONFIGS)
    t0 = time.perf_counter()
    write_synthetic_kits23(SHARED_KITS, Path(cfg["tasks"]["KiTS23"]["sources"][0]["path"]),
                           CASES, seed=cfg["seed"])
    prep_s = time.perf_counter() - t0
    print("# Every stage of the paper's configuration on KiTS23-sized data\n")
    print(header(prep_s))
    if args.part in ("data", "both"):
        part_data(workdir, workdir / cfg["results_dir"], cfg, args.resenc)
    if args.part in ("all", "both"):
        part_all(workdir)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nThis script's own peak RSS: {own:.0f} MB.")


if __name__ == "__main__":
    main()
