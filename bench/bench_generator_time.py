"""How long `rf1m models generator` takes on a quiet 2-core machine, estimated on a shared one.

Why: the stage must fit 15 minutes on 2 quiet cores, but the cores it is developed on are shared
(load average 10-18 on 2 cores), where wall times say more about the neighbours than the code. So
each training step is timed against a reference step whose quiet-machine time was measured
(research/tiny_generator.md, 2 threads, quiet): the VAE of the same size on 16 crops of 64 px with
L1 + KL, 0.24-0.28 s a step. Both run interleaved (bench/timing.py), and the median ratio times the
reference's quiet time is the estimate. The UNet is unchanged from the research run (0.46 s a step at
batch 32), and so is encoding (45 s for 3,000 images); rendering is single-threaded numpy/OpenCV, so
its CPU time (not wall time) per image is what transfers.

    .venv/bin/python bench/bench_generator_time.py [--repeats 5] [--threads 1]
Writes bench/results/generator_time.json.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.timing import Record, interleaved, ratio  # noqa: E402
from pipelines.train_generator import GeneratorConfig, _step, _to_tensor, build_vae, corpus, vae_loss  # noqa: E402

QUIET = {"vae_ref_step": 0.26, "unet_step": 0.46, "encode_3000": 45.0}  # research/tiny_generator.md


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="VAE steps per timed repeat")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    rec = Record("generator_time", vars(args))
    cfg = GeneratorConfig()
    t = time.process_time()
    images = corpus(GeneratorConfig(images=64))["images"]
    render_cpu = (time.process_time() - t) / 64

    def trainer(batch, crop, loss_fn):
        vae = build_vae(cfg)
        opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
        rng = np.random.default_rng(0)

        def one(_r):
            t0 = time.perf_counter()
            for _ in range(args.steps):
                idx, (ox, oy) = rng.integers(0, len(images), batch), rng.integers(0, cfg.size - crop + 1, 2)
                x = _to_tensor(images[idx, oy:oy + crop, ox:ox + crop])
                post = vae.encode(x).latent_dist
                _step(opt, vae.parameters(), loss_fn(vae.decode(post.sample()).sample, x) + 1e-6 * post.kl().mean(), 1e-3)
            return (time.perf_counter() - t0) / args.steps
        return one

    reference = trainer(16, 64, F.l1_loss)  # the research's measured step
    stage = trainer(cfg.vae_batch, cfg.size, lambda r, x: vae_loss(r, x, cfg))  # this stage's step
    base, cand = interleaved(reference, stage, args.repeats)
    r = ratio(base, cand, more_work=False)  # other shapes and losses: neither side does strictly more
    vae_step = QUIET["vae_ref_step"] / r["median"]
    quiet = {"render_s": render_cpu * cfg.images, "vae_s": vae_step * cfg.vae_steps,
             "encode_s": QUIET["encode_3000"] * cfg.images / 3000, "unet_s": QUIET["unet_step"] * cfg.unet_steps,
             "other_s": 15.0}  # building the tiny text encoder, saving, held-out stats (measured 10-15 s)
    quiet = {k: round(v, 1) for k, v in quiet.items()}
    quiet["total_min"] = round(sum(quiet.values()) / 60, 1)
    # The pessimistic end: the slowest repeat's ratio.
    quiet["total_min_worst"] = round(quiet["total_min"] + (1 / r["min"] - 1 / r["median"]) * vae_step * r["median"]
                                     * cfg.vae_steps / 60, 1)
    print(f"VAE step, reference / stage throughput: {r['median']:.3f} (min {r['min']:.3f}, max {r['max']:.3f}); "
          f"render {render_cpu * 1000:.1f} ms CPU/image; quiet estimate {quiet}")
    rec.save(vae_ref_over_stage=r, vae_step_quiet_s=round(vae_step, 3), render_cpu_ms=round(render_cpu * 1000, 1),
             quiet_estimate=quiet, steps={"vae": cfg.vae_steps, "unet": cfg.unet_steps}, quiet_reference=QUIET)


if __name__ == "__main__":
    main()
