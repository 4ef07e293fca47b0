"""LoRA against full fine-tuning: time per training step, peak memory and trainable share (MedGen Fig. 8's claim; issue 10).

MedGen reports that LoRA takes about half the GPU time of full fine-tuning. At the embedded size (a denoiser of about a
million parameters) the backward pass through activations dominates and the two cost the same (NOTES.md: 0.84-0.97).
This script times both on the same Wan denoiser (`medgen.generate.models`'s small Wan, widened and deepened) and the
same batch, at sizes from the embedded one up to about 100M parameters, one process per (size, mode) so that peak
memory is that run's own. One step = flow-matching loss on random latents and text states, backward, AdamW step.

    .venv/bin/python benchmarks/bench_lora_vs_full.py [--steps 5]

Writes benchmarks/results/lora_vs_full.json; `--render` prints the markdown table for RESULTS.md.
"""
import argparse, json, os, resource, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = {  # name: (heads, head_dim, layers)
    "embedded": (4, 16, 2),
    "small": (8, 32, 4),
    "medium": (8, 64, 8),
    "large": (12, 64, 12),
}
LORA = dict(r=16, lora_alpha=16, target_modules=["to_q", "to_k", "to_v", "to_out.0"])


def one_run(size: str, mode: str, steps: int, warmup: int = 2) -> dict:
    import torch
    from diffusers import WanTransformer3DModel
    torch.manual_seed(0); torch.set_num_threads(os.cpu_count() or 1)
    heads, head_dim, layers = SIZES[size]
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=8,
                                  out_channels=8, text_dim=384, freq_dim=64, ffn_dim=4 * heads * head_dim, num_layers=layers)
    total = sum(p.numel() for p in model.parameters())
    if mode == "lora":
        from peft import LoraConfig
        model.requires_grad_(False)
        model.add_adapter(LoraConfig(**LORA))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 8, 3, 16, 16, generator=g)   # a batch of 2 latent clips: 9 frames at 64 px through the small Wan VAE
    text = torch.randn(2, 32, 384, generator=g)
    times = []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        t = torch.rand(2, generator=g)
        noise = torch.randn(x0.shape, generator=g)
        xt = (1 - t.view(-1, 1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1, 1) * noise
        pred = model(hidden_states=xt, timestep=t * 1000, encoder_hidden_states=text, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred, noise - x0)   # flow matching: the velocity from data to noise
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        if step >= warmup: times.append(time.perf_counter() - t0)
    return dict(size=size, mode=mode, parameters=total, trainable=sum(p.numel() for p in trainable),
                step_s=sorted(times)[len(times) // 2], peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main(steps: int) -> list[dict]:
    rows = []
    for size in SIZES:
        for mode in ("full", "lora"):
            r = subprocess.run([sys.executable, __file__, "--one", size, mode, "--steps", str(steps)], capture_output=True, text=True)
            if r.returncode: raise RuntimeError(r.stderr[-3000:])
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    return rows


def render(rows: list[dict]) -> str:
    by = {(r["size"], r["mode"]): r for r in rows}
    lines = ["| size | parameters | LoRA trainable share | full step (s) | LoRA step (s) | LoRA / full time | full peak RSS (MB) | LoRA peak RSS (MB) |",
             "|---|---|---|---|---|---|---|---|"]
    for size in SIZES:
        f, l = by[(size, "full")], by[(size, "lora")]
        lines.append(f"| {size} {SIZES[size]} | {f['parameters']:,} | {100 * l['trainable'] / l['parameters']:.2f} % | {f['step_s']:.3f} | "
                     f"{l['step_s']:.3f} | {l['step_s'] / f['step_s']:.2f} | {f['peak_rss_mb']:.0f} | {l['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--one", nargs=2, metavar=("SIZE", "MODE"))
    ap.add_argument("--render", action="store_true")
    a = ap.parse_args()
    out = ROOT / "benchmarks/results/lora_vs_full.json"
    if a.one: print(json.dumps(one_run(*a.one, steps=a.steps)))
    elif a.render: print(render(json.loads(out.read_text())["rows"]))
    else:
        rows = main(a.steps)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(dict(rows=rows, lora=LORA, cpu_count=os.cpu_count(), steps=a.steps), indent=2) + "\n")
        print(render(rows))
