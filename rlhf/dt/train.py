"""Train a Decision Transformer, or the behaviour-cloning baselines in the same network, on an offline data set.

    rlhf dt train --config configs/dt/train_cartpole.yaml
    rlhf dt train --config configs/dt/train_cartpole.yaml --method filtered_bc --top_fraction 0.1

Methods (same network, context, optimiser and steps; they differ only in data and conditioning):
    dt           conditioned on the return-to-go of each step (Chen et al., 2021)
    bc           behaviour cloning on all episodes (return token fixed at 0)
    filtered_bc  behaviour cloning on the top `top_fraction` of episodes by return

Each step: 1. sample window ends uniformly over all steps (a pure function of seed and step, so a resumed
run draws the same batches), 2. build left-padded windows with return-to-go, mask and timesteps,
3. predict every action of the window from the tokens before it, 4. masked cross-entropy (discrete) or MSE
(continuous). Writes the output contract plus `<output_dir>/model/` (see rlhf/dt/model.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from rlhf.config import ConfigError, RunConfig, option, require_at_least
from rlhf.dt.data import OfflineDataset
from rlhf.dt.model import DecisionTransformer, return_stats, spec_from_dataset
from rlhf.dt.sequences import stack_windows, window
from rlhf.losses import dt_action_loss
from rlhf.fsio import releases_run_lock


@dataclass
class DTTrainConfig(RunConfig):
    """Train a Decision Transformer (or BC / filtered BC in the same network) on an offline data set."""

    output_dir: str = option("runs/dt/train", help="Where model/ and the run files go.")
    dataset: str = option("runs/dt/data", help="Directory holding dataset.npz (from `rlhf dt data`).")
    method: str = option("dt", help="dt: return-conditioned; bc: behaviour cloning on all episodes; "
                         "filtered_bc: BC on the top_fraction of episodes by return.",
                         choices=("dt", "bc", "filtered_bc"))
    top_fraction: float = option(0.1, help="Fraction of episodes (highest return) kept by filtered_bc.")
    context_len: int = option(20, help="K: steps per window (3K tokens).")
    hidden_size: int = option(64, help="Transformer width.")
    n_layer: int = option(2, help="Transformer blocks.")
    n_head: int = option(1, help="Attention heads.")
    dropout: float = option(0.1, help="Dropout in the transformer.")
    rtg_scale: float | None = option(None, help="Returns-to-go are divided by this (stored with the model); "
                                     "null: the largest |episode return| in the data set.")
    batch_size: int = option(64, help="Windows per optimiser step.")
    max_steps: int = option(2000, help="Optimiser steps.")
    learning_rate: float = option(1e-3, help="AdamW peak learning rate.")
    weight_decay: float = option(1e-4, help="AdamW weight decay.")
    warmup_steps: int = option(100, help="Linear warm-up steps, then constant (as in the DT paper).")
    max_grad_norm: float = option(0.25, help="Gradient clipping norm (the DT paper's 0.25; <= 0: none).")
    save_every: int = option(0, help="Checkpoint every this many steps (0: none; the model is saved at the end).")
    keep_checkpoints: int = option(1, help="Checkpoints kept.")
    num_threads: int = option(1, help="torch CPU threads (0: torch's default).")

    def validate(self) -> None:
        super().validate()
        require_at_least(self, 1, "context_len", "hidden_size", "n_layer", "n_head", "batch_size", "max_steps")
        require_at_least(self, 0, "warmup_steps", "save_every", "keep_checkpoints", "num_threads")
        if not 0 < self.top_fraction <= 1:
            raise ConfigError(f"top_fraction must be in (0, 1], got {self.top_fraction}")
        if self.hidden_size % self.n_head:
            raise ConfigError(f"hidden_size {self.hidden_size} must be a multiple of n_head {self.n_head}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.rtg_scale is not None and not self.rtg_scale > 0:
            raise ConfigError(f"rtg_scale must be > 0 or null, got {self.rtg_scale}")


class WindowSampler:
    """Training windows of one data set: window ends drawn uniformly over all steps."""

    def __init__(self, data: OfflineDataset, K: int):
        self.K = K
        self.arrays = {"states": data.observations, "actions": data.actions, "rtg": data.rtg()}
        self.offsets = data.offsets
        self.episode_of_step = np.repeat(np.arange(len(data.lengths)), data.lengths)  # [N]
        self.num_steps = len(data.rewards)

    def batch(self, step: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
        """The windows of optimiser step `step`: a pure function of (seed, step)."""
        rng = np.random.default_rng([seed, step])
        ends = rng.integers(0, self.num_steps, size=batch_size)  # flat step indices
        windows = []
        for flat in ends:
            e = self.episode_of_step[flat]
            windows.append(window(self.arrays, int(self.offsets[e]), int(flat - self.offsets[e]), self.K))
        return {k: torch.from_numpy(v) for k, v in stack_windows(windows).items()}


def training_data(cfg: DTTrainConfig, data: OfflineDataset) -> OfflineDataset:
    return data.top_fraction(cfg.top_fraction) if cfg.method == "filtered_bc" else data


def loss_on_batch(model: DecisionTransformer, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    preds = model(batch["states"], batch["actions"], batch["rtg"], batch["timesteps"], batch["mask"])  # [B, K, A]
    if model.spec.discrete:
        targets = batch["actions"]
    else:
        targets = model.normalize_actions(batch["actions"].float())
    return dt_action_loss(preds, targets, batch["mask"], model.spec.discrete)


@releases_run_lock
def train(cfg: DTTrainConfig) -> dict:
    from tqdm.auto import tqdm

    from rlhf.distributed import make_accelerator
    from rlhf.runs import RunLogger, latest_checkpoint, load_checkpoint, prepare_output_dir, save_checkpoint

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    accelerator = make_accelerator(bf16=False, report_to=cfg.report_to, project_dir=cfg.output_dir)
    if accelerator.num_processes > 1:
        raise ConfigError("rlhf dt train runs on one process (the models are small); launch it without "
                          "accelerate/torchrun")
    full = OfflineDataset.load(cfg.dataset)
    data = training_data(cfg, full)
    out = prepare_output_dir(cfg, accelerator)
    torch.manual_seed(cfg.seed)

    # 1. model, sized and normalised from the (possibly filtered) data
    spec = spec_from_dataset(data, context_len=cfg.context_len, hidden_size=cfg.hidden_size, n_layer=cfg.n_layer,
                             n_head=cfg.n_head, dropout=cfg.dropout, rtg_scale=cfg.rtg_scale,
                             condition_on_return=cfg.method == "dt", method=cfg.method)
    spec.data_returns = return_stats(full.returns)  # the whole data set's, also for filtered BC
    model = DecisionTransformer(spec)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0)
    sampler = WindowSampler(data, cfg.context_len)

    start = 0
    ckpt = latest_checkpoint(out) if cfg.resume else None
    if ckpt is not None:
        from transformers import DecisionTransformerModel

        model.core.load_state_dict(DecisionTransformerModel.from_pretrained(ckpt / "model").state_dict())
        start = load_checkpoint(accelerator, ckpt, optimizer, scheduler)["step"]
        print(f"dt train: resuming from {ckpt} (step {start})")
    logger = RunLogger(accelerator, cfg, "rlhf-dt", resume_step=start if ckpt is not None else None)
    print(f"dt train: {cfg.method} on {len(data.lengths)} episodes / {len(data.rewards)} steps of {spec.env} "
          f"(returns {data.returns.min():.1f} .. {data.returns.max():.1f}); "
          f"{sum(p.numel() for p in model.parameters())} parameters; rtg_scale {spec.rtg_scale:g}")

    model.train()
    t0, running = time.time(), []
    bar = tqdm(total=cfg.max_steps, initial=start, desc=f"dt train ({cfg.method})")
    for step in range(start, cfg.max_steps):
        # 2. a batch of windows, 3-4. predict actions and take the loss
        batch = sampler.batch(step, cfg.batch_size, cfg.seed)
        loss = loss_on_batch(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(),  # <= 0: no clipping, as in SFT
                                                   cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
        optimizer.step()
        scheduler.step()
        running.append(loss.item())
        bar.update()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.max_steps:
            logger.log({"train/loss": float(np.mean(running)), "train/grad_norm": float(grad_norm),
                        "train/lr": scheduler.get_last_lr()[0]}, step=step + 1)
            bar.set_postfix(loss=f"{np.mean(running):.4f}")
            running = []
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.max_steps:
            save_checkpoint(accelerator, out, step + 1, model.core.save_pretrained, optimizer, scheduler,
                            {"method": cfg.method}, cfg.keep_checkpoints)
    bar.close()
    model.eval()
    if accelerator.is_main_process:
        from rlhf.fsio import publish_dir

        with publish_dir(out / "model", what="model") as tmp:  # an older model/ stays whole until replaced
            model.save(tmp)
    accelerator.wait_for_everyone()
    with torch.no_grad():  # loss over a fixed set of windows, for comparing runs
        final = loss_on_batch(model, sampler.batch(2**31 - 1, 512, cfg.seed)).item()
    metrics = logger.finish({"train/final_loss": final, "train/steps": cfg.max_steps,
                             "train/seconds": time.time() - t0, "train/episodes": int(len(data.lengths)),
                             "method": cfg.method, "rtg_scale": spec.rtg_scale,
                             "parameters": sum(p.numel() for p in model.parameters())})
    if not math.isfinite(final):
        raise RuntimeError(f"training diverged: final loss {final}")
    print(f"dt train: final loss {final:.4f}; model in {out / 'model'}")
    return metrics
