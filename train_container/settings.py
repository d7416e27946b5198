"""Settings of the GRU/LSTM trainer (`python -m train_container`) and its hyperparameters.

The defaults were chosen by bench/tune.py on the train splits of all three stations (rolling
origin over their tail, never a test split) within a CPU budget; docs/ACCURACY.md has the grid,
the figures and the reasons. Both cells use the same defaults: the grid found no setting worth
telling them apart by.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.settings.trainer import TrainerSettings, WindowShape


class RecurrentHyperparameters(WindowShape):
    """One GRU/LSTM training run. The service reads these from the environment through
    TrainSettings; the benches and the tests build them."""

    MODEL_TYPE: Literal["GRU", "LSTM"] = Field(description="Which recurrent model this trainer trains")
    EPOCHS: int = Field(default=10, ge=1, le=10000, description="Most epochs (early stopping may end sooner)")
    BATCH_SIZE: int = Field(default=256, ge=1, le=65536, description="Windows per optimiser step")
    LEARNING_RATE: float = Field(default=3e-3, gt=0, le=1.0, description="Peak rate under onecycle")
    HIDDEN_SIZE: int = Field(default=64, ge=1, le=4096, description="Recurrent hidden units")
    NUM_LAYERS: int = Field(default=1, ge=1, le=8, description="Stacked recurrent layers")
    DROPOUT: float = Field(default=0.1, ge=0.0, lt=1.0, description="Dropout between stacked layers")
    PATIENCE: int = Field(
        default=10, ge=1, le=1000, description="Epochs without validation gain before stopping"
    )
    # Training full PobleSec takes about 5 CPU seconds (bench/tune.py); the cap only guards a
    # machine far busier than three trainers sharing two cores.
    MAX_TRAIN_SECONDS: float = Field(default=20.0, gt=0, description="Wall-clock cap on training")
    # onecycle steps per batch; plateau keeps the rate and halves it after PATIENCE/3 stale epochs.
    LR_SCHEDULE: Literal["onecycle", "plateau"] = Field(
        default="onecycle", description="onecycle: warm up, then anneal to ~0 over EPOCHS"
    )
    SCALING: Literal["robust", "minmax"] = Field(
        default="robust",
        description=(
            "robust: per-KPI normalisation inside the network (median/IQR inputs, changes in typical "
            "one-step changes); minmax: none"
        ),
    )
    INPUT_CLIP: float = Field(
        default=0.0, ge=0.0, description="Largest |normalised input| the network reads; 0 = no limit"
    )
    LOSS: Literal["mse", "huber", "mae"] = Field(
        default="mae", description="Training loss on the change, in the network's per-KPI units"
    )
    HUBER_DELTA: float = Field(
        default=1.0, gt=0, description="Huber loss threshold, in the network's per-KPI units"
    )


class TrainSettings(TrainerSettings, RecurrentHyperparameters):
    """GRU/LSTM trainer (`python -m train_container`): the hyperparameters plus where to run them."""

    USE_CUDA: bool = Field(default=True, description="Use CUDA when a GPU is present")
    TORCH_THREADS: int = Field(default=1, ge=0, le=256, description="CPU threads; 0 = one per core")

    def model_type_name(self) -> str:
        return self.MODEL_TYPE

    def hyperparameters(self) -> RecurrentHyperparameters:
        return RecurrentHyperparameters.from_settings(self)
