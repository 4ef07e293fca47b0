"""Activation memory of the real-width denoiser, with and without gradient checkpointing, and the per-GPU memory plan of
each paper variant (issue 22).

Measured: the published Wan2.1-T2V-1.3B denoiser (resources/model_configs/, random weights, 1.42B parameters) with
Table 5's rank-32 LoRA takes LoRA steps on the CPU at two latent sizes (32 and 128 video tokens) with and without
gradient checkpointing, one process per run so that each peak is its own; the peak resident memory of a step above
the memory before it, differenced between the two sizes, is the activation memory per video token (fp32).

Planned (not measured): for each paper variant at its frames and size, weights, gradients, AdamW state and EMA from the
exact parameter counts (the models built on PyTorch's meta device) and activations scaled from the Wan measurement by
blocks x hidden width, halved for bf16 autocast, assuming memory-efficient attention (on a GPU, PyTorch's SDPA flash
or memory-efficient kernels keep attention linear in tokens; the CPU measurement here uses small token counts, where
the quadratic term is negligible).

    .venv/bin/python benchmarks/bench_real_width.py            # measure (about 5 minutes on 2 cores, 7 GB of memory)
    .venv/bin/python benchmarks/bench_real_width.py --render   # the markdown for RESULTS.md

Writes benchmarks/results/real_width.json.
"""
import argparse, json, os, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "real_width.json"
SIDES = (8, 16)  # latent height = width; 2 latent frames; patch 2 x 2: 32 and 128 video tokens
TEXT_TOKENS = 16


def one_run(side: int, checkpointing: bool) -> dict:
    import psutil, torch
    from medgen.generate.models import real_size_transformer
    from medgen.generate.train import MemoryMeter, TrainConfig, set_trainable
    torch.set_num_threads(os.cpu_count() or 1)
    model = real_size_transformer("wan", seed=0)
    params = set_trainable(model, TrainConfig(lora_rank=32, lora_alpha=32, seed=0))
    if checkpointing: model.enable_gradient_checkpointing()
    model.train()
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn((1, 16, 2, side, side), generator=g), torch.randn((1, TEXT_TOKENS, 4096), generator=g)
    peaks, seconds = [], []
    for step in range(2):  # the second step: the optimiser state exists, what remains is the step's own memory
        t0 = time.time()
        with MemoryMeter(interval=0.005) as m:
            out = model(hidden_states=x, timestep=torch.tensor([500]), encoder_hidden_states=text, return_dict=False)[0]
            out.float().pow(2).mean().backward(); opt.step(); opt.zero_grad(set_to_none=True)
        peaks.append(m.peak_mb); seconds.append(time.time() - t0)
    return dict(side=side, tokens=2 * (side // 2) ** 2, checkpointing=checkpointing, peak_mb=peaks[-1], seconds=seconds[-1],
                rss_mb=psutil.Process().memory_info().rss / 2 ** 20, trainable=sum(p.numel() for p in params),
                total=sum(p.numel() for p in model.parameters()))


def measure() -> dict:
    runs = []
    for ckpt in (False, True):
        for side in SIDES:
            r = subprocess.run([sys.executable, __file__, "--one", str(side), str(int(ckpt))], capture_output=True, text=True, cwd=ROOT,
                               env=os.environ | {"HF_HUB_OFFLINE": "1"})
            if r.returncode: raise RuntimeError(r.stderr[-3000:])
            runs.append(json.loads(r.stdout.strip().splitlines()[-1])); print(runs[-1], flush=True)
    per_token = {}
    for ckpt in (False, True):
        a, b = [r for r in runs if r["checkpointing"] == ckpt]
        per_token["on" if ckpt else "off"] = (b["peak_mb"] - a["peak_mb"]) * 2 ** 20 / (b["tokens"] - a["tokens"])
    return dict(model="Wan2.1-T2V-1.3B denoiser (random weights)", precision="fp32 (CPU)", lora_rank=32, runs=runs,
                bytes_per_token=per_token, layers=30, hidden=1536, machine=f"{os.cpu_count()} CPU cores")


# the paper variants at their frames and size (latent: the VAE's 4x time, 8x space; patch 2 x 2, Mochi's VAE 6x time)
VARIANTS = [  # name, family, frames, height, width, mode, GPUs, strategy
    ("MedGen LoRA on HunyuanVideo (§4.1)", "hunyuan", 93, 480, 480, "lora", 8, "ddp"),
    ("MedGen LoRA on Wan2.1-1.3B (released weights)", "wan", 93, 480, 480, "lora", 8, "ddp"),
    ("MedGen full fine-tuning on Wan2.1-1.3B (Fig. 8)", "wan", 93, 480, 480, "full", 8, "ddp"),
    ("Ophora on CogVideoX-2b (full, 49 x 720 x 480)", "cogvideox", 49, 480, 720, "full", 8, "ddp"),
    ("MedGen Table 4 LoRA on Mochi-1-preview", "mochi", 91, 480, 480, "lora", 8, "ddp"),
    ("HunyuanVideo full fine-tuning (FSDP, 8 GPUs)", "hunyuan", 93, 480, 480, "full", 8, "fsdp"),
]
BLOCKS = {"wan": (30, 1536), "hunyuan": (60, 3072), "cogvideox": (30, 1920), "mochi": (48, 3072)}  # blocks, hidden width


def plan(measured: dict) -> list[dict]:
    import torch
    from medgen.generate.models import family, real_size_transformer
    from medgen.generate.train import TrainConfig
    rows = []
    for name, fam, frames, h, w, mode, gpus, strategy in VARIANTS:
        model = real_size_transformer(fam, "meta")
        total = sum(p.numel() for p in model.parameters())
        targets = TrainConfig().lora_targets  # the attention projections peft adapts (module names ending so)
        lora = sum(32 * (m.in_features + m.out_features) for n, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and any(n == t or n.endswith("." + t) for t in targets))
        trainable = lora if mode == "lora" else total
        step = family(fam).frame_step
        tokens = ((frames - 1) // step + 1) * (h // 16) * (w // 16)
        blocks, width = BLOCKS[fam]
        scale = blocks * width / (measured["layers"] * measured["hidden"])
        shard = gpus if strategy == "fsdp" else 1
        gb = 2 ** 30
        row = dict(variant=name, tokens=tokens, total_b=total / 1e9, trainable_b=trainable / 1e9, strategy=f"{strategy.upper()} x {gpus}",
                   weights=4 * total / shard / gb, grads=4 * trainable / shard / gb, adamw=8 * trainable / shard / gb, ema=4 * trainable / shard / gb)
        for ck in ("off", "on"):
            row[f"activations_{ck}"] = measured["bytes_per_token"][ck] * scale * tokens / 2 / gb  # bf16 autocast: half of fp32
        row["total_on"] = row["weights"] + row["grads"] + row["adamw"] + row["ema"] + row["activations_on"]
        row["fits_80gb"] = row["total_on"] < 80
        rows.append(row)
    return rows


def render(res: dict) -> str:
    m = res["measured"]
    lines = ["## Real-width denoiser: activation memory and the paper variants' memory plan (issue 22)", "",
             f"Measured on {m['machine']}: {m['model']}, LoRA rank {m['lora_rank']}, {m['precision']}, one LoRA step (forward, backward, AdamW) "
             "at 2 latent frames x 8 x 8 and x 16 x 16 (32 and 128 video tokens, 16 text tokens); peak resident memory of the second step above "
             "the memory before it. Resident memory is a coarse measure on the CPU (the allocator keeps and reuses freed pages, and "
             "the runs shared the 2 cores with a pipeline run, so the seconds are not timings of record): read the per-token numbers as "
             "upper bounds, to be replaced by CUDA's allocator peaks in the GPU rehearsal (issue 23).", "",
             "| gradient checkpointing | tokens | peak MB | seconds |", "|---|---|---|---|"]
    lines += [f"| {'on' if r['checkpointing'] else 'off'} | {r['tokens']} | {r['peak_mb']:.0f} | {r['seconds']:.1f} |" for r in m["runs"]]
    lines += ["", f"Activation memory per video token (fp32): **{m['bytes_per_token']['off'] / 2 ** 20:.2f} MB without checkpointing, "
              f"{m['bytes_per_token']['on'] / 2 ** 20:.3f} MB with it**. A 93-frame 480 x 480 window is 21,600 tokens: without checkpointing "
              f"{m['bytes_per_token']['off'] * 21600 / 2 ** 30:.0f} GB of fp32 activations per window (about half under bf16 autocast), so "
              "gradient checkpointing is on in the paper profile.", "",
              "Per-GPU memory of each paper variant at its frames and size (GB; micro-batch 1, bf16 autocast with fp32 master weights as "
              "`train_denoiser` runs it, AdamW, EMA of the trained weights, checkpointing on; activations scaled from the Wan measurement by "
              "blocks x width and halved for bf16: an estimate; attention assumed memory-efficient, as PyTorch's SDPA kernels are on a GPU):", "",
              "| variant | video tokens | parameters (B) | trained (B) | strategy | weights | grads | AdamW | EMA | activations (ckpt off / on) | total (ckpt on) | fits 80 GB |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["plan"]:
        lines.append(f"| {r['variant']} | {r['tokens']:,} | {r['total_b']:.2f} | {r['trainable_b']:.3f} | {r['strategy']} | {r['weights']:.1f} | "
                     f"{r['grads']:.1f} | {r['adamw']:.1f} | {r['ema']:.1f} | {r['activations_off']:.0f} / {r['activations_on']:.1f} | "
                     f"{r['total_on']:.1f} | {'yes' if r['fits_80gb'] else 'no'} |")
    lines += ["", "A variant that does not fit needs what the row's numbers point to: FSDP to shard weights, gradients and optimizer "
              "state over the node's GPUs (`resources/accelerate/node8_fsdp.yaml`), 8-bit AdamW (`train.common.defaults.optimizer: adamw8bit`), "
              "or frozen weights in bf16.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", nargs=2, type=int)
    ap.add_argument("--render", action="store_true")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    if a.one: print(json.dumps(one_run(a.one[0], bool(a.one[1]))))
    elif a.render: print(render(json.loads(OUT.read_text())))
    else:
        measured = measure()
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(dict(measured=measured, plan=plan(measured)), indent=1) + "\n")
        print(render(json.loads(OUT.read_text())))
