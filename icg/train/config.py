"""Training settings that the command line needs without importing torch: the optimisation settings
(``TrainConfig``) and the runs the paper made with each captioner, which ``icg train`` defaults to."""

from __future__ import annotations

from dataclasses import dataclass

from icg.errors import ConfigError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. The defaults are the Hugging Face ``Trainer``'s; ``PREFIX_PAPER_RUN`` and
    ``SBG_PAPER_RUN`` are the runs the paper made."""

    epochs: int = 10
    batch_size: int = 8
    lr: float = 5e-5
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0 turns clipping off
    schedule_epochs: int | None = None  # the linear decay reaches 0 after this many epochs (None: epochs)
    adam_eps: float = 1e-8
    drop_last: bool = False  # drop the last partial batch of every epoch
    precision: str = "auto"  # auto: bf16 (or fp16) autocast on CUDA, fp32 elsewhere
    seed: int = 0
    log_every: int = 50
    keep: int = 0  # epoch folders kept (0: all)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("--epochs and --batch-size must be at least 1")
        if self.lr <= 0 or self.warmup_steps < 0 or self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ConfigError("--lr must be positive; --warmup, --weight-decay and --clip-grad not negative")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.keep < 0 or self.log_every < 1:
            raise ConfigError("--keep must be 0 or more and --log-every at least 1")
        if self.schedule_epochs is not None and self.schedule_epochs < self.epochs:
            raise ConfigError(
                f"--schedule-epochs ({self.schedule_epochs}) must be at least --epochs ({self.epochs})"
            )
        if not self.adam_eps > 0:
            raise ConfigError(f"--adam-eps must be positive, not {self.adam_eps}")

    @property
    def scheduled_epochs(self) -> int:
        """The epochs the learning-rate schedule is sized for."""
        return self.epochs if self.schedule_epochs is None else self.schedule_epochs


#: The seed's CLIP-prefix notebook ("gradient clipping" variant): ``epochs = 30`` sizes the linear schedule
#: (``epochs * len(loader)`` steps, 100 warm-up) but ``range(current_epoch + 1, epochs)`` runs 29 of them;
#: ``transformers.AdamW(lr=2e-5)`` (eps 1e-6, no weight decay), batch 40 with ``drop_last=True``, gradient
#: norm clipped at 1.0.
PREFIX_PAPER_RUN = TrainConfig(
    epochs=29,
    schedule_epochs=30,
    batch_size=40,
    lr=2e-5,
    warmup_steps=100,
    weight_decay=0.0,
    max_grad_norm=1.0,
    adam_eps=1e-6,
    drop_last=True,
)
PREFIX_VAL_IMAGES = 0  # the notebook computed no validation loss

#: The seed's SBG notebook: ``TrainingArguments(per_device_train_batch_size=8, num_train_epochs=10,
#: evaluation_strategy="epoch")`` and the ``Trainer``'s defaults for the rest (AdamW lr 5e-5, eps 1e-8,
#: no weight decay, no warm-up, linear decay, clipping at 1.0, the last partial batch kept), on lines
#: packed into blocks of 480 tokens, with the 1000 images before the test split held out for the
#: evaluation (as many as the test split: ``None``).
SBG_PAPER_RUN = TrainConfig(
    epochs=10,
    batch_size=8,
    lr=5e-5,
    warmup_steps=0,
    weight_decay=0.0,
    max_grad_norm=1.0,
    adam_eps=1e-8,
    drop_last=False,
)
SBG_BLOCK_SIZE = 480
SBG_VAL_IMAGES = None
