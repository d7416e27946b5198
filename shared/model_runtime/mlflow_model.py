"""What MLflow executes to build an FLTS model ("models from code"; see shared.model_runtime.pyfunc).

The model's own state comes from its artifacts and config, read in WindowForecaster.load_context.
"""

from mlflow.models import set_model

from shared.model_runtime.pyfunc import WindowForecaster

set_model(WindowForecaster())
