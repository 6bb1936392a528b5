"""``tracking:`` in a plan: where a federation's metrics go besides ``logs/metrics.jsonl``.

```yaml
tracking:
  tensorboard: true            # event files in LOGS/tensorboard (the default when installed)
  mlflow:
    uri: http://127.0.0.1:5000 # an MLflow tracking server (or a file: URI)
    experiment: my-study       # default: the plan's name
```
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class MlflowSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str = Field(min_length=1)
    experiment: str | None = None


class TrackingSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tensorboard: bool = True
    mlflow: MlflowSpec | None = None
