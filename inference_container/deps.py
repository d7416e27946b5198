"""What the routes need, built once per app and handed to them as FastAPI dependencies.

`create_app` builds one `AppState` (settings, model manager, telemetry, inference log and the
/predict handler) and keeps it on `app.state`; a route asks for the part it needs by type, e.g.
`manager: ManagerDep`, instead of closing over local variables of the factory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Request

from inference_container.inference_log import InferenceLogWriter
from inference_container.lifecycle import ModelManager
from inference_container.predict import PredictHandler
from inference_container.settings import InferenceSettings
from inference_container.telemetry import ServiceMetrics
from shared.storage import ObjectStore


@dataclass(frozen=True)
class AppState:
    """Everything one app serves with; the background parts start and stop with the app."""

    settings: InferenceSettings
    manager: ModelManager
    metrics: ServiceMetrics
    log_writer: InferenceLogWriter | None
    predict: PredictHandler

    @classmethod
    def build(
        cls,
        settings: InferenceSettings,
        manager: ModelManager | None = None,
        log_writer: InferenceLogWriter | None = None,
    ) -> AppState:
        """The given manager and writer, or new ones from `settings` (the writer only when
        INFERENCE_LOG_ENABLED); one metrics registry shared by all of them."""
        if manager is not None and manager.metrics is not None:
            metrics = manager.metrics
        else:
            metrics = ServiceMetrics(settings.MAX_METRIC_IDENTIFIERS)
        manager = manager or ModelManager(settings, metrics)
        if log_writer is None and settings.INFERENCE_LOG_ENABLED:
            log_writer = InferenceLogWriter(
                lambda: ObjectStore.from_settings(settings),
                settings.BUCKET_INFERENCE_LOGS,
                settings.INFERENCE_LOG_BATCH_SIZE,
                settings.INFERENCE_LOG_FLUSH_S,
                settings.INFERENCE_LOG_QUEUE_MAX,
                metrics,
            )
        predict = PredictHandler(settings, manager, metrics, log_writer)
        return cls(settings, manager, metrics, log_writer, predict)

    def start(self) -> None:
        self.manager.start()
        if self.log_writer is not None:
            self.log_writer.start()

    def stop(self) -> None:
        self.manager.stop()
        if self.log_writer is not None:
            self.log_writer.stop()


def app_state(app: FastAPI) -> AppState:
    state = app.state.inference
    assert isinstance(state, AppState), "the app was not built by inference_container.app.create_app"
    return state


# A sync dependency would run on the thread pool: these are async, so they run on the loop.
async def get_state(request: Request) -> AppState:
    return app_state(request.app)


StateDep = Annotated[AppState, Depends(get_state)]


async def get_settings(state: StateDep) -> InferenceSettings:
    return state.settings


async def get_manager(state: StateDep) -> ModelManager:
    return state.manager


async def get_metrics(state: StateDep) -> ServiceMetrics:
    return state.metrics


async def get_log_writer(state: StateDep) -> InferenceLogWriter | None:
    return state.log_writer


async def get_predict_handler(state: StateDep) -> PredictHandler:
    return state.predict


SettingsDep = Annotated[InferenceSettings, Depends(get_settings)]
ManagerDep = Annotated[ModelManager, Depends(get_manager)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
LogWriterDep = Annotated[InferenceLogWriter | None, Depends(get_log_writer)]
PredictHandlerDep = Annotated[PredictHandler, Depends(get_predict_handler)]
