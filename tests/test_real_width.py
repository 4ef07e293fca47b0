"""The paper profile's training path at real width (issue 22): the published Wan2.1-T2V-1.3B denoiser (its config from
resources/model_configs/, random weights: 1.42B parameters) takes two LoRA steps of Table 5's rank through
`train_denoiser` itself, with gradient checkpointing on, EMA on, its captions read from a text store of UMT5-sized
conditions (4096 wide) and its windows from shards: no text encoder, no corpus in memory."""
import pandas as pd
import torch
from safetensors.torch import save_file

from medgen.generate.models import build_small, real_size_transformer
from medgen.generate.stores import ShardWindows, ShardWriter, TextConditions
from medgen.generate.train import TrainConfig, TrainData, parameter_counts, train_denoiser


def test_two_lora_steps_of_the_real_wan_denoiser(tmp_path):
    torch.set_num_threads(2)
    pipe = build_small("wan", seed=0)  # the scheduler and the (unused) VAE; the denoiser is replaced by the real-size one
    pipe.transformer = real_size_transformer("wan", seed=0).eval()
    assert 1.41e9 < sum(p.numel() for p in pipe.transformer.parameters()) < 1.43e9
    g = torch.Generator().manual_seed(0)
    writer = ShardWriter(tmp_path / "shards", shard_size=2)
    writer.add(torch.randn((4, 16, 2, 8, 8), generator=g), [dict(k=k) for k in range(4)])  # 4 windows of 2 x 4 x 4 = 32 video tokens
    index = writer.close()
    captions = ["lung ultrasound", "colonoscopy", "", "a street"]
    save_file({"encoder_hidden_states": torch.randn((4, 16, 4096), generator=g)}, str(tmp_path / "text.safetensors"))
    pd.DataFrame(dict(text=captions, row=range(4))).to_parquet(tmp_path / "text.parquet", index=False)
    data = TrainData(ShardWindows(tmp_path / "shards", index), ["lung ultrasound", "colonoscopy", "a street", "colonoscopy"],
                     text=TextConditions(tmp_path / "text.safetensors"))
    config = TrainConfig(train_batch_size=1, global_batch_size=2, lora_rank=32, lora_alpha=32, max_train_steps=2, learning_rate=1e-3,
                         checkpointing_steps=0, validation_steps=0, gradient_checkpointing=True, ema_decay=0.999, cfg=0.1, shift=7.0,
                         max_sequence_length=16, dataloader_num_workers=0, seed=1024)
    summary = train_denoiser(pipe, "wan", data, config, tmp_path / "run")
    log = pd.read_csv(tmp_path / "run" / "train_log.csv")
    assert summary["steps"] == 2 and summary["batch"] == dict(micro=1, accumulation=2, processes=1, global_batch=2)
    assert log.loss.notna().all() and (log.loss > 0).all()
    assert 0.01 < summary["trainable"] / 1e9 < 0.05  # Table 5's rank-32 LoRA on the attention projections: about 1.7 % of 1.42B
    assert (tmp_path / "run" / "adapter" / "pytorch_lora_weights.safetensors").stat().st_size > 10e6
    assert not pipe.transformer.is_gradient_checkpointing  # switched off again for sampling
