"""The column names of the data contract. No imports: every image may use them."""

TIME_COLUMN = "time"
KPI_COLUMNS: tuple[str, ...] = (
    "down",
    "up",
    "rnti_count",
    "mcs_down",
    "mcs_down_var",
    "mcs_up",
    "mcs_up_var",
    "rb_down",
    "rb_down_var",
    "rb_up",
    "rb_up_var",
)
TIME_FEATURES: tuple[str, ...] = (
    "min_of_day_sin",
    "min_of_day_cos",
    "day_of_week_sin",
    "day_of_week_cos",
    "day_of_year_sin",
    "day_of_year_cos",
)
FEATURE_COLUMNS: tuple[str, ...] = KPI_COLUMNS + TIME_FEATURES
