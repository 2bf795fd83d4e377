"""The training loop: one process per device, DDP over backbone + head (or a class-sharded head), full-state checkpoints.

Why the loop looks like this:
- One step = prepare the batch on the device (flips seeded by (seed, step)), forward under autocast
  (backbone only; head and loss in float32), backward (through the fp16 grad scaler when amp=fp16),
  one small all-reduce of the loss terms (the global mean for logging, and the NaN/inf check, so every
  rank agrees on stopping), optional clipping, the optimizer step.
- The lr is set before every step from the data position (see schedule.py), so it changes exactly on
  the first step of a milestone epoch and survives a resume at another world size.
- The sampler is advanced by the trainer after each consumed batch (the DataLoader prefetches ahead),
  so a checkpoint records the data position of the batches really trained on.
- The classifier (train/classifier.py) is replicated (one DDP over backbone + head) or, with
  head.sharded, split by classes across ranks (DDP over the backbone only); the loop is the same.
- Checkpoints are written by rank 0 only, with the RNG states of every rank (and, when sharded, the
  head's columns and momentum) gathered to it. A resume reads and verifies before anything is deleted
  and falls back past damaged checkpoints; a save is verified before older ones are pruned
  (`checkpoint.Checkpointer`).
- /metrics is served from process start: the exporter starts before data staging ("staging" phase).
- SIGTERM (a pod eviction or a spot-node preemption, forwarded by torchrun) sets a flag; the flag
  rides on the step's loss all-reduce, so every rank finishes the same step, a complete checkpoint
  is written, and the process exits with status 143 for the operator to restart it (see preemption.py).
- A non-finite loss term stops the run with the step and the term named, before the optimizer step,
  so the weights and the last checkpoint stay good. With run.max_bad_steps > 0 up to that many such
  steps are skipped instead (buffers such as BN statistics and cos_v are rolled back).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from typing import Any

import torch

from gbcosface import config as config_mod
from gbcosface.config import TrainConfig
from gbcosface.tracking import Tracker
from gbcosface.train import checkpoint, rng
from gbcosface.train import state as train_state
from gbcosface.train.classifier import build_classifier
from gbcosface.train.distributed import (
    DistEnv,
    all_gather_object,
    all_reduce_sum_,
    barrier,
    broadcast_object,
    init_distributed,
    shutdown,
)
from gbcosface.train.optim import apply_config, build_optimizer
from gbcosface.train.output import RunOutput
from gbcosface.train.preemption import Preempted, PreemptionFlag
from gbcosface.train.progress import ProgressLog
from gbcosface.train.schedule import EpochLR, base_lrs

log = logging.getLogger("gbcosface.train")

FAULT_ENV = "GBCOSFACE_FAULT_KILL_AT_STEP"  # "STEP" or "STEP:RANK": SIGKILL that rank after STEP (tests)
# "STEP" or "STEP:RANK": after STEP, that rank sends SIGTERM to its torchrun (the pod's PID 1, as the
# kubelet would), or to itself when it runs bare (tests of the preemption path)
SIGTERM_ENV = "GBCOSFACE_FAULT_SIGTERM_AT_STEP"


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN/inf; the message names the step and the term."""


def rank_seed(seed: int, rank: int, salt: int = 0) -> int:
    """A per-rank seed for RNG streams (dropout) that must differ between ranks."""
    return (int(seed) * 1_000_003 + (int(rank) + 1) * 7_919 + int(salt) * 104_729) % (1 << 63)


def _fault_step(rank: int, name: str = FAULT_ENV) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    step, _, who = raw.partition(":")
    return int(step) if int(who or 0) == rank else None


class Trainer:
    """Build everything from a TrainConfig, resume if possible, train, export. `run()` -> summary."""

    def __init__(self, cfg: TrainConfig, env: DistEnv) -> None:
        self._t0 = time.perf_counter()
        self.cfg = cfg
        self.env = env
        self.device = env.device
        self.config_hash = config_mod.config_hash(cfg)
        self.output = RunOutput(cfg.run.output)
        self._fault_at = _fault_step(env.rank)
        self._sigterm_at = _fault_step(env.rank, SIGTERM_ENV)
        self.tracker = Tracker()  # rank 0's sinks are opened in run()
        self.metrics = self._metrics()  # first: /metrics answers while the data is staged
        try:
            self._setup()
        except BaseException:
            self.metrics.set_phase("failed")
            self.metrics.close()
            raise

    # ------------------------------------------------------------------------------------------ setup
    def _setup(self) -> None:
        from gbcosface.data.train_set import (
            RecordFaceDataset,
            ResumableDistributedSampler,
            build_train_loader,
        )
        from gbcosface.models import backbone_from_config

        cfg, env = self.cfg, self.env
        if cfg.run.deterministic:
            rng.enable_determinism()
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
        rng.seed_everything(cfg.run.seed)  # identical initial weights on every rank and every world size

        from gbcosface.train.staging import stage_training_data

        self.metrics.set_phase("staging")
        stage_training_data(cfg.data, env.local_rank)  # pinned data onto this node (data.stage_from)
        barrier(env)
        self.metrics.set_phase("starting")
        self.dataset = RecordFaceDataset(cfg.data.train_dir, skip_bad=cfg.data.skip_bad_samples)
        self.num_classes = cfg.head.num_classes or self.dataset.num_classes
        if cfg.head.num_classes and cfg.head.num_classes != self.dataset.num_classes:
            log.warning("head.num_classes=%d but %s has %d classes", cfg.head.num_classes,
                        cfg.data.train_dir, self.dataset.num_classes)

        backbone = backbone_from_config(cfg.model)
        self.arch = dict(backbone.arch)
        if cfg.run.channels_last:
            backbone = backbone.to(memory_format=torch.channels_last)
        self.clf = build_classifier(cfg, env, backbone, self.num_classes)

        self.global_batch = cfg.data.batch_size * env.world_size
        self.backbone_lr, self.head_lr = base_lrs(cfg.optim, self.global_batch)
        self.optimizer = build_optimizer(self.clf.backbone, self.clf.head, cfg.optim,
                                         self.backbone_lr, self.head_lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.run.amp == "fp16")

        self.sampler = ResumableDistributedSampler(len(self.dataset), env.world_size, env.rank,
                                                   seed=cfg.run.seed, shuffle=True)
        self.loader = build_train_loader(self.dataset, self.sampler, cfg.data.batch_size, cfg.data.num_workers,
                                         drop_last=True, seed=rank_seed(cfg.run.seed, env.rank, 1))
        per_rank = math.ceil(len(self.dataset) / env.world_size)
        self.batches_per_epoch = per_rank // cfg.data.batch_size
        if self.batches_per_epoch < 1:
            raise ValueError(f"{cfg.data.train_dir}: {len(self.dataset)} images give no full batch of "
                             f"{cfg.data.batch_size} per process at world size {env.world_size}")
        self.scheduler = EpochLR(self.optimizer, cfg.schedule, self.batches_per_epoch)
        self.progress = train_state.Progress()
        self.checkpointer = checkpoint.Checkpointer(cfg.run.output, cfg.run.keep_last)
        self.resumed_from: str | None = None
        self.last_terms: dict[str, float] = {}
        self.last_ckpt_step = -1
        self.last_val_step = -1
        self.last_val: Any = None
        if cfg.run.resume:
            self._resume()
        else:
            rng.seed_everything(rank_seed(cfg.run.seed, env.rank))

        if cfg.run.compile and self.device.type == "cuda":
            self.clf.backbone.compile()  # in place: state_dict keys stay those of the plain module
        elif cfg.run.compile and env.is_main:
            # Measured with torch 2.14.1 on x86 CPUs: inductor's backward of a residual block with a
            # strided oneDNN convolution segfaults; compilation is a GPU throughput feature anyway.
            log.warning("run.compile ignored on %s: torch.compile is used on CUDA devices only", self.device)
        self.clf.wrap()
        self.preemption = PreemptionFlag(cfg.run.checkpoint_on_sigterm)
        self.validator = None
        if env.is_main and cfg.run.val_every > 0 and cfg.data.val_targets:
            from gbcosface.train.validation import Validator

            self.validator = Validator(cfg.data.val_dir, cfg.data.val_targets, cfg.data.image_size, self.device)

    def _metrics(self) -> Any:
        from gbcosface.monitoring.exporter import TrainingMetrics

        metrics = TrainingMetrics.from_env(
            self.cfg.run.metrics_port, config_hash=self.config_hash,
            gpu_index=self.device.index if self.device.type == "cuda" else None,
        )
        metrics.start()
        return metrics

    # ----------------------------------------------------------------------------------------- resume
    def _resume(self) -> None:
        """Rank 0 picks the newest checkpoint that verifies and fits (nothing is pruned here); all load it.

        A CheckpointError on rank 0 (none usable, or a config that no longer fits) travels through the
        broadcast, so every rank stops with the same one-line error instead of waiting for rank 0.
        """
        env = self.env
        choice: checkpoint.CheckpointRef | checkpoint.CheckpointError | None = None
        loaded = None
        if env.is_main:
            try:
                loaded = self.checkpointer.load_latest(check=self._check_fits)
                choice = loaded.ref if loaded is not None else None
            except checkpoint.CheckpointError as exc:
                choice = exc
        choice = broadcast_object(env, choice)  # every rank loads the checkpoint rank 0 chose
        if isinstance(choice, checkpoint.CheckpointError):
            raise choice
        if choice is None:
            rng.seed_everything(rank_seed(self.cfg.run.seed, env.rank))
            return
        ref = choice
        if loaded is None:  # the other ranks read and verify the same checkpoint
            loaded = checkpoint.load(ref)
            self._check_fits(loaded)
        state, rngs = loaded.state, loaded.rngs
        self.progress = train_state.restore(
            state, classifier=self.clf, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler, where=ref.uri,
        )
        apply_config(self.optimizer, self.cfg.optim, self.backbone_lr, self.head_lr)
        self.sampler.load_state_dict(state["sampler"])
        saved_world = int(state["world_size"])
        ranks = rngs["ranks"]
        if env.rank < len(ranks):
            rng.restore(ranks[env.rank], self.device)
        else:  # a rank the saved job did not have: a fresh stream, seeded by the resume step
            rng.seed_everything(rank_seed(self.cfg.run.seed, env.rank, salt=self.progress.step + 1))
        if state.get("config_hash") != self.config_hash and env.is_main:
            log.warning("resuming %s written under config %s; the current config is %s",
                        ref.uri, str(state.get("config_hash"))[:12], self.config_hash[:12])
        if saved_world != env.world_size and env.is_main:
            log.warning("resuming at world size %d from a checkpoint taken at world size %d: the epoch "
                        "continues at global sample %d; the per-rank order is new, and ranks beyond the old world "
                        "get fresh RNG streams",
                        env.world_size, saved_world, self.sampler.global_position)
        self.resumed_from = ref.uri
        self.last_ckpt_step = self.progress.step
        if env.is_main:
            log.info("resumed from %s (step %d, epoch %d)", ref.uri, self.progress.step, self.progress.epoch)

    def _check_fits(self, loaded: checkpoint.Loaded) -> None:
        train_state.check_fits(loaded.state, classifier=self.clf, config_hash=self.config_hash, where=loaded.ref.uri)

    # ------------------------------------------------------------------------------------------- loop
    def total_steps(self) -> int:
        """Steps this run will reach: the end of the last epoch or max_steps, whichever comes first."""
        p, cfg = self.progress, self.cfg
        left_now = len(self.sampler) // cfg.data.batch_size if p.epoch < cfg.schedule.epochs else 0
        later = max(0, cfg.schedule.epochs - p.epoch - 1) * self.batches_per_epoch
        total = p.step + left_now + later
        if cfg.schedule.max_steps is not None:
            total = min(total, cfg.schedule.max_steps)
        return total

    def run(self) -> dict[str, Any]:
        cfg, env, p = self.cfg, self.env, self.progress
        total = self.total_steps()
        if env.is_main:
            self.output.write_text("config.yaml", config_mod.to_yaml(cfg))
            log.info("training %s on %d process(es) (%s), global batch %d, %d classes, %d images, "
                     "%d steps/epoch, steps %d -> %d", cfg.model.name, env.world_size, self.device,
                     self.global_batch, self.num_classes, len(self.dataset), self.batches_per_epoch,
                     p.step, total)
        reporter = ProgressLog(total, p.step, self.global_batch, cfg.run.log_every, env.is_main)
        self.tracker = Tracker.for_trainer(cfg, env, self.config_hash, start_step=p.step, total=total,
                                           global_batch=self.global_batch, extra_params={"world_size": env.world_size})
        self.metrics.set_phase("training")
        self.clf.train()
        start_step, t_start = p.step, time.perf_counter()
        self.preemption.install()
        try:
            while p.step < total and p.epoch < cfg.schedule.epochs:
                self.sampler.set_epoch(p.epoch)
                if not self._train_epoch(total, reporter):
                    break  # stopped inside the epoch (max_steps)
                p.epoch += 1  # the loader ran out: the next epoch starts at its first sample
                p.samples_in_epoch = 0
            train_seconds = time.perf_counter() - t_start
            if cfg.run.val_every > 0 and self.last_val_step != p.step:
                self._validate()
            if self.last_ckpt_step != p.step:
                self.save_checkpoint()
            summary = self._finish(self.last_terms, p.step - start_step, train_seconds)
            self.tracker.finish(summary)
            self.metrics.set_phase("done")
            return summary
        except Preempted:
            self.metrics.set_phase("preempted")
            raise
        except BaseException:
            self.metrics.set_phase("failed")
            raise
        finally:
            self.preemption.uninstall()
            reporter.close()
            self.tracker.close(preempted=self.preemption.agreed)
            self.metrics.close()

    def _train_epoch(self, total: int, reporter: ProgressLog) -> bool:
        """Train on the rest of the current epoch; True when the loader ran out, False at `total`."""
        cfg, env, p = self.cfg, self.env, self.progress
        it = iter(self.loader)
        t_prev = time.perf_counter()
        while p.step < total:
            try:
                images, labels = next(it)
            except StopIteration:
                return True
            wait = time.perf_counter() - t_prev
            self.last_terms = self._step(images, labels)
            now = time.perf_counter()
            lr = self.scheduler.last_lrs()[0]
            self.metrics.observe_step(p.step, p.epoch, cfg.data.batch_size, now - t_prev, wait,
                                      self.last_terms, self.last_terms.get("cos_v"), lr)
            reporter.step(p.step, p.epoch, wait, self.last_terms, lr)
            self.tracker.step(p.step, p.epoch, self.last_terms, lr)
            if cfg.run.val_every > 0 and p.step % cfg.run.val_every == 0:
                self._validate()
            if self.preemption.agreed:
                self._preempt()
            if p.step % cfg.run.checkpoint_every == 0:
                self.save_checkpoint()
            if self._fault_at is not None and p.step >= self._fault_at:
                log.error("fault injection (%s): SIGKILL rank %d after step %d", FAULT_ENV, env.rank, p.step)
                os.kill(os.getpid(), signal.SIGKILL)
            if self._sigterm_at is not None and p.step >= self._sigterm_at:
                self._sigterm_at = None
                target = os.getppid() if os.environ.get("TORCHELASTIC_RUN_ID") else os.getpid()
                log.warning("fault injection (%s): SIGTERM to pid %d after step %d", SIGTERM_ENV, target, p.step)
                os.kill(target, signal.SIGTERM)
            t_prev = time.perf_counter()
        return False

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        from gbcosface.data.train_set import prepare_batch

        cfg, p = self.cfg, self.progress
        x = prepare_batch(images, self.device, p.step, rank_seed(cfg.run.seed, self.env.rank, 2),
                          cfg.data.random_flip, cfg.run.channels_last)
        y = labels.to(self.device, non_blocking=True)
        self.scheduler.apply(p.epoch, p.samples_in_epoch / self.global_batch)
        snapshot = self._buffers() if cfg.run.max_bad_steps > 0 else None
        self.optimizer.zero_grad(set_to_none=True)
        terms = self.clf.loss_terms(x, y, step=p.step)
        self.scaler.scale(terms["loss"]).backward()
        values = self._global_terms(terms)
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            self._non_finite(bad, snapshot)
        else:
            if cfg.optim.clip_grad_norm is not None:
                self.scaler.unscale_(self.optimizer)
                self.clf.clip_grad_norm_(cfg.optim.clip_grad_norm)  # the global norm, also when sharded
            scale_before = self.scaler.get_scale() if self.scaler.is_enabled() else None
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if scale_before is not None and self.scaler.get_scale() < scale_before:
                self.metrics.inc_nonfinite("grad")  # fp16 overflow: the scaler skipped this update
        self.sampler.advance(cfg.data.batch_size)
        p.step += 1
        p.samples_seen += self.global_batch
        p.samples_in_epoch = self.sampler.global_position
        return values

    def _global_terms(self, terms: dict[str, torch.Tensor]) -> dict[str, float]:
        """Mean of each loss term over ranks, as floats: one all-reduce and one host sync per step.

        The same all-reduce carries the SIGTERM flag (how many ranks got one), so all ranks agree.
        """
        names = ["loss", *sorted(k for k in terms if k != "loss")]
        flag = torch.tensor([float(self.preemption.requested)], device=terms["loss"].device)
        vec = torch.cat([torch.stack([terms[k].detach().float().reshape(()) for k in names]), flag])
        all_reduce_sum_(self.env, vec)
        *values, signalled = vec.tolist()
        self.preemption.agree(signalled > 0)
        return {k: v / self.env.world_size for k, v in zip(names, values, strict=True)}

    def _buffers(self) -> list[torch.Tensor]:
        return [b.detach().clone() for b in self.clf.buffers()]

    def _non_finite(self, bad: list[str], snapshot: list[torch.Tensor] | None) -> None:
        p, cfg = self.progress, self.cfg
        for term in bad:
            self.metrics.inc_nonfinite(term)
        p.bad_steps += 1
        if snapshot is None or p.bad_steps > cfg.run.max_bad_steps:
            last = self.checkpointer.last_good if self.env.is_main else None  # not a newer damaged one
            where = f"the last good checkpoint is {last.uri}" if last else "no checkpoint was written yet"
            raise NonFiniteLossError(
                f"non-finite loss term(s) {', '.join(bad)} at step {p.step + 1} (epoch {p.epoch}); "
                f"stopping before the optimizer step ({p.bad_steps} non-finite step(s), "
                f"run.max_bad_steps={cfg.run.max_bad_steps}); {where}"
            )
        with torch.no_grad():
            for buf, saved in zip(self.clf.buffers(), snapshot, strict=True):
                buf.copy_(saved)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler.is_enabled():
            self.scaler.update(self.scaler.get_scale() * 0.5)
        log.warning("skipping step %d: non-finite %s (%d of at most %d)", p.step + 1, ", ".join(bad),
                    p.bad_steps, cfg.run.max_bad_steps)

    # ------------------------------------------------------------------------------ checkpoint / val
    def save_checkpoint(self) -> checkpoint.CheckpointRef | None:
        """Gather every rank's RNG state, then rank 0 writes the checkpoint, verifies it and prunes old ones."""
        env, p = self.env, self.progress
        self.metrics.set_phase("checkpointing")
        rngs = all_gather_object(env, rng.capture(self.device))
        model_state = self.clf.full_state(self.optimizer)  # a collective when sharded
        ref = None
        if env.is_main:
            assert model_state is not None
            full = train_state.collect(
                model_state=model_state, scheduler=self.scheduler, scaler=self.scaler, progress=p,
                world_size=env.world_size, global_batch=self.global_batch, config_hash=self.config_hash,
            )
            full["sampler"] = self.sampler.state_dict()
            files = {
                checkpoint.STATE_FILE: checkpoint.to_bytes(full),
                checkpoint.RNG_FILE: checkpoint.to_bytes({"world_size": env.world_size, "ranks": rngs}),
            }
            meta = {"epoch": p.epoch, "world_size": env.world_size, "config_hash": self.config_hash,
                    "samples_seen": p.samples_seen}
            ref, deleted = self.checkpointer.save(p.step, files, meta)  # written, verified, then pruned
            log.info("checkpoint %s%s", ref.uri, f" (pruned steps {deleted})" if deleted else "")
        self.last_ckpt_step = p.step
        barrier(env)
        self.metrics.set_phase("training")
        return ref

    def _validate(self) -> None:
        env, p = self.env, self.progress
        self.last_val_step = p.step
        if self.validator is not None and env.is_main:
            self.metrics.set_phase("validating")
            result = self.validator.run(self.clf.backbone, p.step)
            for target, res in result.per_target.items():
                self.metrics.set_validation(target, res["accuracy"], res.get("xnorm"))
                log.info("val step %d %s: accuracy %.4f +- %.4f, xnorm %.3f", p.step, target, res["accuracy"],
                         res.get("std", float("nan")), res.get("xnorm", float("nan")))
            self.last_val = result
            self.tracker.validation(p.step, result.per_target)
            if result.mean_accuracy > p.best_score:
                p.best_score, p.best_step = result.mean_accuracy, p.step
                self.output.save_backbone(self.clf.backbone, "model/best", self.arch)
                self.output.write_json("model/best/val.json", {"step": p.step, "mean_accuracy": p.best_score,
                                                              "targets": result.per_target})
                log.info("new best mean accuracy %.4f at step %d", p.best_score, p.step)
            self.metrics.set_phase("training")
        barrier(env)

    def _preempt(self) -> None:
        """Every rank saw the SIGTERM flag after the same step: checkpoint it, then stop (exit 143)."""
        p = self.progress
        t0 = time.perf_counter()
        if self.last_ckpt_step != p.step:
            self.save_checkpoint()
        seconds = time.perf_counter() - t0
        if self.env.is_main:
            log.warning("SIGTERM: checkpoint of step %d written in %.1f s; exiting for a restart", p.step, seconds)
        raise Preempted(f"preempted by SIGTERM after step {p.step} (checkpoint written in {seconds:.1f} s)")

    # ------------------------------------------------------------------------------------------- end
    def _finish(self, last_terms: dict[str, float], steps_run: int, seconds: float) -> dict[str, Any]:
        env, p = self.env, self.progress
        summary = {
            "steps": p.step,
            "steps_this_run": steps_run,
            "epoch": p.epoch,
            "samples_seen": p.samples_seen,
            "final_loss_terms": last_terms,
            "cos_v": last_terms.get("cos_v"),
            "samples_per_second": steps_run * self.global_batch / seconds if seconds > 0 else None,
            "train_seconds": seconds,
            "config_hash": self.config_hash,
            "world_size": env.world_size,
            "global_batch": self.global_batch,
            "num_classes": self.num_classes,
            "head_sharded": self.clf.sharded,
            "device": str(self.device),
            "amp": self.cfg.run.amp,
            "resumed_from": self.resumed_from,
            "bad_steps": p.bad_steps,
            "best": {"mean_accuracy": p.best_score, "step": p.best_step} if p.best_step >= 0 else None,
            "last_validation": self.last_val.per_target if self.last_val is not None else None,
            "wall_seconds": time.perf_counter() - self._t0,
        }
        if env.is_main:
            self.output.save_backbone(self.clf.backbone, "model", self.arch)
            self.output.write_text("config.yaml", config_mod.to_yaml(self.cfg))
            self.output.write_json("train_summary.json", summary)
            log.info("done: %d steps, %.1f samples/s, output %s", p.step, summary["samples_per_second"] or 0.0,
                     self.cfg.run.output)
        barrier(env)
        return summary


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train under the launcher's environment (bare process, torchrun or PyTorchJob); rank 0's summary."""
    env = init_distributed()
    try:
        return Trainer(cfg, env).run()
    finally:
        shutdown(env)
