"""Settings of the Prophet trainer (`python -m nonml_container`) and its hyperparameters."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.settings.trainer import Hyperparameters, TrainerSettings


class ProphetHyperparameters(Hyperparameters):
    """One Prophet model per KPI. Kept small on purpose: no uncertainty sampling, no MCMC, few
    changepoints, and fitted on bucket means (nonml_container.fitting says why)."""

    PROPHET_CHANGEPOINTS: int = Field(
        default=10,
        ge=0,
        le=500,
        # The run's param has carried Prophet's own argument name from the start.
        serialization_alias="prophet_n_changepoints",
        description="Trend changepoints",
    )
    PROPHET_CHANGEPOINT_PRIOR_SCALE: float = Field(default=0.05, gt=0, description="Trend flexibility")
    PROPHET_SEASONALITY_MODE: Literal["additive", "multiplicative"] = Field(
        default="additive", description="How seasonality combines with the trend"
    )
    PROPHET_DAILY_FOURIER: int = Field(
        default=10, ge=1, le=100, description="Fourier order of the daily cycle"
    )
    PROPHET_WEEKLY_FOURIER: int = Field(
        default=3, ge=1, le=100, description="Fourier order of the weekly cycle"
    )
    PROPHET_FIT_RESAMPLE_MINUTES: int = Field(
        default=10, ge=0, le=1440, description="Fit on means of buckets this long; 0 = on the raw rows"
    )


class ProphetSettings(TrainerSettings, ProphetHyperparameters):
    """Prophet trainer (`python -m nonml_container`): the hyperparameters plus how to run the fits."""

    MODEL_TYPE: Literal["PROPHET"] = Field(default="PROPHET", description="Always PROPHET")
    PROPHET_WORKERS: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Fitting processes; 1 = in-process (each fit on 10-minute means is sub-second)",
    )
    PROPHET_FIT_TIMEOUT_S: float = Field(
        default=900.0, gt=0, description="Limit on all fits of one claim (both rounds, every KPI)"
    )

    def model_type_name(self) -> str:
        return self.MODEL_TYPE

    def hyperparameters(self) -> ProphetHyperparameters:
        return ProphetHyperparameters.from_settings(self)
